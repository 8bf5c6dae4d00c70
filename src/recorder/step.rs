//! [`Step`]: what one attempt to move data came to, the answer of every way of
//! moving (the recorder's own and the write-behind's).

/// Result of one attempt to move data.
#[derive(Debug)]
pub(super) enum Step {
    /// Bytes went from the input to the output.
    Moved(usize),
    /// Bytes went, and the input has probably nothing more for now.
    MovedAll(usize),
    /// The input has nothing (more) right now.
    Idle,
    /// A FIFO, socket or file input is at its end (no writer): nothing will come
    /// soon, so the recorder waits a whole slice instead of polling a hang-up.
    Ended,
    /// Interrupted, or the mover changed: just go round again.
    Retry,
    /// The write-behind holds all the pipes it may: wait for the writer.
    Full,
}
