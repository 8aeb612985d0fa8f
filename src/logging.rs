//! The root logger: slog with slog-term, written asynchronously to stderr so that a session
//! never waits on the terminal. Every actor logs through a child of this logger.

use slog::{o, Drain, Logger};

/// A logger writing `level` and above to stderr.
pub fn terminal(level: slog::Level) -> Logger {
    let decorator = slog_term::TermDecorator::new().stderr().build();
    let drain = slog_term::FullFormat::new(decorator).build().fuse();
    let drain = slog_async::Async::new(drain)
        .chan_size(4096)
        .overflow_strategy(slog_async::OverflowStrategy::DropAndReport)
        .build()
        .fuse();
    Logger::root(drain.filter_level(level).fuse(), o!())
}

/// A logger that drops everything, for tests and embedders that bring none.
pub fn discard() -> Logger {
    Logger::root(slog::Discard, o!())
}
