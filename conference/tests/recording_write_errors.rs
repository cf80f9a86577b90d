//! An output that fails gives typed errors, never a panic, and the recorder
//! refuses to write after a hole.

mod recording_support;

use confer_conference::recording::{FRAME_SAMPLES, Recorder, RecorderConfig, RecordingError};
use std::io::{self, Write};

/// Accepts `budget` bytes, then fails every write (after a short write, like
/// a full disk). Optionally fails `flush`.
struct FailingWriter {
    budget: usize,
    written: Vec<u8>,
    fail_flush: bool,
}

impl Write for FailingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.budget == 0 {
            return Err(io::Error::other("disk full"));
        }
        let n = buf.len().min(self.budget);
        self.budget -= n;
        self.written.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        if self.fail_flush {
            Err(io::Error::other("flush failed"))
        } else {
            Ok(())
        }
    }
}

fn failing(budget: usize) -> FailingWriter {
    FailingWriter {
        budget,
        written: Vec::new(),
        fail_flush: false,
    }
}

#[test]
fn a_failing_output_at_creation_is_an_io_error() {
    // OpusHead is a 47-byte page, OpusTags a 50-byte one.
    for budget in [0, 5, 30, 47, 60, 96] {
        assert!(matches!(
            Recorder::new(failing(budget), RecorderConfig::new(1)),
            Err(RecordingError::Io(_))
        ));
    }
}

#[test]
fn a_failing_output_mid_recording_is_an_io_error_then_the_recorder_stays_closed() {
    let speech = recording_support::speech_48k();
    // Budgets inside the first audio page header, in its body, in later pages.
    for budget in [97, 100, 130, 3000, 9000, 20000] {
        let mut rec = Recorder::new(failing(budget), RecorderConfig::new(0x5eed)).unwrap();
        let mut first_error = None;
        for f in speech.chunks_exact(FRAME_SAMPLES).take(500) {
            match rec.push_frame(f) {
                Ok(()) => {}
                Err(e) => {
                    first_error = Some(e);
                    break;
                }
            }
        }
        let first = first_error.unwrap_or_else(|| panic!("budget {budget}: no error in 10 s"));
        assert!(
            matches!(first, RecordingError::Io(_)),
            "budget {budget}: {first:?}"
        );
        assert!(matches!(
            rec.push_frame(&speech[..FRAME_SAMPLES]),
            Err(RecordingError::Poisoned)
        ));
        assert!(matches!(rec.push_silence(3), Err(RecordingError::Poisoned)));
        assert!(matches!(rec.finish(), Err(RecordingError::Poisoned)));
    }
}

#[test]
fn a_failing_output_at_finish_is_an_io_error_and_drop_does_not_panic() {
    let speech = recording_support::speech_48k();
    let mut rec = Recorder::new(failing(1000), RecorderConfig::new(2)).unwrap();
    // Less than a page of audio: nothing is written until finish.
    for f in speech.chunks_exact(FRAME_SAMPLES).take(20) {
        rec.push_frame(f).unwrap();
    }
    assert!(matches!(rec.finish(), Err(RecordingError::Io(_))));

    let w = FailingWriter {
        budget: usize::MAX,
        written: Vec::new(),
        fail_flush: true,
    };
    let mut rec = Recorder::new(w, RecorderConfig::new(3)).unwrap();
    rec.push_frame(&speech[..FRAME_SAMPLES]).unwrap();
    assert!(matches!(rec.finish(), Err(RecordingError::Io(_))));

    // Dropping a recorder whose output fails: best effort, no panic.
    let mut rec = Recorder::new(failing(200), RecorderConfig::new(4)).unwrap();
    rec.push_frame(&speech[..FRAME_SAMPLES]).unwrap();
    drop(rec);
}
