"""The package builds into a wheel (`python -m build`) holding every module, py.typed, the
SQLAlchemy dialect entry points and the extras."""

import subprocess
import sys
import zipfile
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]


def test_the_wheel_builds_with_types_entry_points_and_extras(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path),
         str(PACKAGE)],
        check=True, capture_output=True, timeout=120)
    (wheel,) = tmp_path.glob("txbroker-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        sources = {p.relative_to(PACKAGE).as_posix() for p in (PACKAGE / "txbroker").rglob("*.py")}
        assert sources <= names, sources - names
        assert "txbroker/py.typed" in names
        info = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry_points = archive.read(info).decode()
        metadata = archive.read(info.replace("entry_points.txt", "METADATA")).decode()
    assert "mysql.txbroker = txbroker.sqlalchemy.dialect:TxbrokerDialect" in entry_points
    assert "mariadb.txbroker = txbroker.sqlalchemy.dialect:TxbrokerMariaDBDialect" in entry_points
    assert 'Requires-Dist: sqlalchemy>=2.0; extra == "sqlalchemy"' in metadata
    assert 'Requires-Dist: pymysql>=1.0; extra == "test"' in metadata
