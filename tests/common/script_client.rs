//! A protocol client as a real process, so that a test can kill it with SIGKILL: Python with
//! the standard library only (a hand-made MessagePack encoder and decoder). It is killed and
//! reaped when its guard drops, including when a test fails.

use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::process::{collect_lines, joined, LogLines};

/// A protocol client in Python, standard library only. argv: host, port, a JSON list of
/// requests to send one by one, each answered `ok` before the next (else it prints `FAILED`
/// and exits 1), and a JSON list of requests to send without waiting for their answers.
/// Then it prints `READY` and blocks reading stdin, so it also ends if the test process dies.
const PYTHON_CLIENT: &str = r#"
import json, socket, struct, sys

def pack(v):
    if v is None: return b"\xc0"
    if v is True: return b"\xc3"
    if v is False: return b"\xc2"
    if isinstance(v, int):
        if 0 <= v < 128: return bytes([v])
        if v >= 0: return b"\xcf" + struct.pack(">Q", v)
        return b"\xd3" + struct.pack(">q", v)
    if isinstance(v, str):
        b = v.encode()
        if len(b) < 32: return bytes([0xa0 | len(b)]) + b
        return b"\xdb" + struct.pack(">I", len(b)) + b
    if isinstance(v, list):
        head = bytes([0x90 | len(v)]) if len(v) < 16 else b"\xdd" + struct.pack(">I", len(v))
        return head + b"".join(pack(x) for x in v)
    if isinstance(v, dict):
        head = bytes([0x80 | len(v)]) if len(v) < 16 else b"\xdf" + struct.pack(">I", len(v))
        return head + b"".join(pack(k) + pack(x) for k, x in v.items())
    raise TypeError(repr(v))

FIXED = {0xcc: ">B", 0xcd: ">H", 0xce: ">I", 0xcf: ">Q", 0xd0: ">b", 0xd1: ">h",
         0xd2: ">i", 0xd3: ">q", 0xca: ">f", 0xcb: ">d"}
SIZED = {0xc4: (">B", "bin"), 0xc5: (">H", "bin"), 0xc6: (">I", "bin"),
         0xd9: (">B", "str"), 0xda: (">H", "str"), 0xdb: (">I", "str"),
         0xdc: (">H", "arr"), 0xdd: (">I", "arr"), 0xde: (">H", "map"), 0xdf: (">I", "map")}

def unpack(b, i):
    t = b[i]; i += 1
    if t <= 0x7f: return t, i
    if t >= 0xe0: return t - 0x100, i
    if t & 0xf0 == 0x80: return unpack_map(b, i, t & 0x0f)
    if t & 0xf0 == 0x90: return unpack_array(b, i, t & 0x0f)
    if t & 0xe0 == 0xa0:
        n = t & 0x1f
        return b[i:i + n].decode(), i + n
    if t == 0xc0: return None, i
    if t == 0xc2: return False, i
    if t == 0xc3: return True, i
    if t in FIXED:
        f = FIXED[t]; n = struct.calcsize(f)
        return struct.unpack(f, b[i:i + n])[0], i + n
    f, kind = SIZED[t]; m = struct.calcsize(f)
    n = struct.unpack(f, b[i:i + m])[0]; i += m
    if kind == "bin": return bytes(b[i:i + n]), i + n
    if kind == "str": return b[i:i + n].decode(), i + n
    if kind == "arr": return unpack_array(b, i, n)
    return unpack_map(b, i, n)

def unpack_array(b, i, n):
    out = []
    for _ in range(n):
        v, i = unpack(b, i); out.append(v)
    return out, i

def unpack_map(b, i, n):
    out = {}
    for _ in range(n):
        k, i = unpack(b, i); v, i = unpack(b, i); out[k] = v
    return out, i

sock = socket.create_connection((sys.argv[1], int(sys.argv[2])))

def send(request):
    body = pack(request)
    sock.sendall(struct.pack(">I", len(body)) + body)

def recv_exact(n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            print("FAILED server closed the connection", flush=True); sys.exit(1)
        data += chunk
    return data

def receive():
    n = struct.unpack(">I", recv_exact(4))[0]
    return unpack(recv_exact(n), 0)[0]

for request in json.loads(sys.argv[3]):
    send(request)
    response = receive()
    if response.get("id") != request["id"] or response.get("ok") is not True:
        print("FAILED", json.dumps(response, default=repr), flush=True); sys.exit(1)
    print("OK", request["id"], flush=True)
for request in json.loads(sys.argv[4]):
    send(request)
print("READY", flush=True)
sys.stdin.read()
"#;

/// A client process (Python). Killed with SIGKILL and reaped on drop.
pub struct ScriptClient {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    output: LogLines,
}

impl ScriptClient {
    /// Starts the client: `complete` requests are each answered `ok` before the next is sent,
    /// `pending` ones are sent without waiting for an answer.
    pub fn start(
        addr: SocketAddr,
        complete: &[serde_json::Value],
        pending: &[serde_json::Value],
    ) -> ScriptClient {
        let mut child = Command::new("python3")
            .args([
                "-c",
                PYTHON_CLIENT,
                &addr.ip().to_string(),
                &addr.port().to_string(),
                &serde_json::Value::from(complete.to_vec()).to_string(),
                &serde_json::Value::from(pending.to_vec()).to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn python3");
        let output = LogLines::default();
        let (sender, lines) = mpsc::channel();
        collect_lines(
            child.stdout.take().expect("stdout"),
            output.clone(),
            Some(sender),
        );
        collect_lines(child.stderr.take().expect("stderr"), output.clone(), None);
        let stdin = child.stdin.take();
        ScriptClient {
            child,
            stdin,
            lines,
            output,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (on the blocking pool) until the client prints a line that is exactly `wanted`.
    pub async fn expect_line(&mut self, wanted: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let line = tokio::task::block_in_place(|| self.lines.recv_timeout(remaining));
            match line {
                Ok(line) if line == wanted => return,
                Ok(line) if line.starts_with("FAILED") => {
                    panic!("the client process failed: {}", joined(&self.output))
                }
                Ok(_) => continue,
                Err(_) => panic!(
                    "the client process did not print {wanted:?} in time; its output:\n{}",
                    joined(&self.output)
                ),
            }
        }
    }

    /// SIGKILL, then reap: once this returns the process is gone and the kernel has closed
    /// its sockets.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL the client process");
        let status = self.child.wait().expect("reap the client process");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "killed by SIGKILL");
        self.stdin = None;
    }
}

impl Drop for ScriptClient {
    fn drop(&mut self) {
        self.stdin = None;
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}
