//! TensorBoard event files: `events.out.tfevents.<unix-secs>.<hostname>.<pid>.<n>`, which
//! `tensorboard --logdir` reads while they grow.
//!
//! The format is TFRecord framing around protobuf `tensorflow.Event` messages. Each record is
//! the data's length (u64 little-endian), the masked CRC-32C of those 8 bytes, the data, and the
//! masked CRC-32C of the data (mask: `((crc >> 15) | (crc << 17)) + 0xa282ead8`, wrapping). The
//! first record is an Event with `wall_time` and `file_version = "brain.Event:2"`; then one Event
//! per point, its `summary` holding the point's scalars (`Value { tag, simple_value }`).
//!
//! Restarts: TensorBoard's EventAccumulator, on an Event whose `session_log.status` is START at
//! step S, drops every point it has read (from any tag, in any earlier file of the folder) whose
//! step is >= S (`_CheckForRestartAndMaybePurge`, for file_version 2). A resumed stage writes one
//! at the step it resumes from, then its points from there on, so points that a killed attempt
//! wrote past its last checkpoint, and that the resumed attempt computes again, are shown once.
//! Files in one folder are read in the order of their names, hence the seconds in the name never
//! go backwards there ([`EventWriter::create`]).
//!
//! The messages are written with prost from the hand-written structs below (field numbers from
//! tensorflow/core/util/event.proto and framework/summary.proto): no protoc, no build script.

use anyhow::{Context, Result};
use prost::Message;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// `tensorflow.Event` (the fields written here).
#[derive(Clone, PartialEq, prost::Message)]
struct Event {
    #[prost(double, tag = "1")]
    wall_time: f64,
    #[prost(int64, tag = "2")]
    step: i64,
    #[prost(oneof = "What", tags = "3, 5, 7")]
    what: Option<What>,
}

/// `Event`'s `oneof what` (the members written here; 6 is the deprecated `log_message`).
#[derive(Clone, PartialEq, prost::Oneof)]
enum What {
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
    #[prost(message, tag = "7")]
    SessionLog(SessionLog),
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, prost::Message)]
struct Summary {
    #[prost(message, repeated, tag = "1")]
    value: Vec<Value>,
}

/// `tensorflow.Summary.Value`: `simple_value` is a member of a `oneof`, so it is written even
/// when it is 0 (hence `optional`: a plain proto3 float 0 would be left out, and the value lost).
#[derive(Clone, PartialEq, prost::Message)]
struct Value {
    #[prost(string, tag = "1")]
    tag: String,
    #[prost(float, optional, tag = "2")]
    simple_value: Option<f32>,
}

/// `tensorflow.SessionLog`: `status` is the `SessionStatus` enum (a varint on the wire).
#[derive(Clone, PartialEq, prost::Message)]
struct SessionLog {
    #[prost(int32, tag = "1")]
    status: i32,
}

/// `SessionLog.SessionStatus.START`.
const START: i32 = 1;

/// What the first record says: the Event format version, 2 (the one whose restarts are marked
/// with `SessionLog.START`).
pub const FILE_VERSION: &str = "brain.Event:2";

fn crc32c(data: &[u8]) -> u32 {
    const CASTAGNOLI: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
    CASTAGNOLI.checksum(data)
}

/// TFRecord's masked CRC-32C.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    crc32c(data).rotate_right(15).wrapping_add(0xa282_ead8)
}

/// `data` framed as one TFRecord.
pub fn frame(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

/// Numbers the files one process makes, so two made in the same second get different names.
static FILES: AtomicU64 = AtomicU64::new(0);

const PREFIX: &str = "events.out.tfevents.";

/// An event file being written; each record is one write(2), so a reader sees whole records
/// (or, after a kill, a torn last one, which TensorBoard ignores).
pub struct EventWriter {
    file: File,
    path: PathBuf,
}

impl EventWriter {
    /// Creates the folder if needed and a new event file in it, and writes its first record.
    /// The seconds in the name are now's, or one more than the latest file's already there, so
    /// the files of successive attempts sort in the order they were written.
    pub fn create(dir: &Path) -> Result<EventWriter> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let latest = fs::read_dir(dir)
            .with_context(|| format!("listing {}", dir.display()))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                name.strip_prefix(PREFIX)?
                    .split('.')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .max();
        let secs = latest.map_or(now, |l| now.max(l + 1));
        let host = hostname();
        let (file, path) = loop {
            let n = FILES.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!("{PREFIX}{secs}.{host}.{}.{n}", std::process::id()));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(f) => break (f, path),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
            }
        };
        let mut w = EventWriter { file, path };
        w.write(0, What::FileVersion(FILE_VERSION.into()))?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One point: scalars under their tags at `step`. Non-finite values are left out.
    pub fn scalars(&mut self, step: u64, values: &[(&str, f32)]) -> Result<()> {
        let value = values
            .iter()
            .filter(|(_, v)| v.is_finite())
            .map(|&(tag, v)| Value {
                tag: tag.into(),
                simple_value: Some(v),
            })
            .collect();
        self.write(step, What::Summary(Summary { value }))
    }

    /// Marks a (re)start at `step`: TensorBoard drops the points at `step` and later that it has
    /// read before this record.
    pub fn session_start(&mut self, step: u64) -> Result<()> {
        self.write(step, What::SessionLog(SessionLog { status: START }))
    }

    fn write(&mut self, step: u64, what: What) -> Result<()> {
        let wall_time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let ev = Event {
            wall_time,
            step: step as i64,
            what: Some(what),
        };
        self.file
            .write_all(&frame(&ev.encode_to_vec()))
            .and_then(|()| self.file.flush())
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

/// This machine's name, as a file name part (TensorFlow's writers use the host name there).
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is writable for its whole length, which is passed.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name: String = String::from_utf8_lossy(if ok { &buf[..end] } else { b"" })
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The records of an event file, checked against their CRCs; a torn last record is left out.
    fn records(bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut at = 0;
        while at + 12 <= bytes.len() {
            let len_bytes = &bytes[at..at + 8];
            let crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap());
            assert_eq!(crc, masked_crc32c(len_bytes), "length CRC at {at}");
            let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
            let end = at + 12 + len + 4;
            if end > bytes.len() {
                break;
            }
            let data = &bytes[at + 12..at + 12 + len];
            let crc = u32::from_le_bytes(bytes[end - 4..end].try_into().unwrap());
            assert_eq!(crc, masked_crc32c(data), "data CRC at {at}");
            out.push(data.to_vec());
            at = end;
        }
        out
    }

    #[test]
    fn crc32c_and_the_tfrecord_mask() {
        // The CRC-32C check value (RFC 3720's polynomial, as in every CRC catalogue).
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
        // 32 zero bytes: RFC 3720 B.4's first test vector.
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        // Masked: the values of TensorBoard's own masked_crc32c (record_writer.py).
        assert_eq!(masked_crc32c(b"123456789"), 0xC78A_B0E5);
        assert_eq!(masked_crc32c(&3u64.to_le_bytes()), 0x0E49_99B0);
        assert_eq!(masked_crc32c(b"abc"), 0x21F1_576E);
    }

    #[test]
    fn a_record_is_length_crc_data_crc() {
        let r = frame(b"abc");
        assert_eq!(r.len(), 8 + 4 + 3 + 4);
        assert_eq!(&r[..8], &3u64.to_le_bytes());
        assert_eq!(&r[8..12], &masked_crc32c(&3u64.to_le_bytes()).to_le_bytes());
        assert_eq!(&r[12..15], b"abc");
        assert_eq!(&r[15..], &masked_crc32c(b"abc").to_le_bytes());
        assert_eq!(records(&r), vec![b"abc".to_vec()]);
        // An empty record still has both CRCs.
        assert_eq!(frame(b"").len(), 16);
    }

    #[test]
    fn events_encode_as_tensorflow_does() {
        // The bytes that TensorFlow's event_pb2 (tensorboard.compat.proto) makes of the same
        // messages.
        let version = Event {
            wall_time: 1.5,
            step: 0,
            what: Some(What::FileVersion(FILE_VERSION.into())),
        };
        let mut want = vec![0x09];
        want.extend_from_slice(&1.5f64.to_le_bytes());
        want.extend_from_slice(&[0x1a, 13]);
        want.extend_from_slice(b"brain.Event:2");
        assert_eq!(version.encode_to_vec(), want);

        // A scalar of 0 is still written (simple_value is a oneof member).
        let point = Event {
            wall_time: 0.0,
            step: 300,
            what: Some(What::Summary(Summary {
                value: vec![Value {
                    tag: "lr".into(),
                    simple_value: Some(0.0),
                }],
            })),
        };
        // step = 300: field 2 varint (0x10, 0xac 0x02); summary: field 5, length 11, holding
        // value (field 1, length 9): tag (0x0a, 2, "lr"), simple_value (0x15, 4 bytes of 0.0).
        let mut want = vec![
            0x10, 0xac, 0x02, 0x2a, 11, 0x0a, 9, 0x0a, 2, b'l', b'r', 0x15,
        ];
        want.extend_from_slice(&0f32.to_le_bytes());
        assert_eq!(point.encode_to_vec(), want);

        // SessionLog START at step 20: field 7, length 2, status (field 1) = 1.
        let start = Event {
            wall_time: 0.0,
            step: 20,
            what: Some(What::SessionLog(SessionLog { status: START })),
        };
        assert_eq!(start.encode_to_vec(), vec![0x10, 20, 0x3a, 2, 0x08, 1]);
    }

    #[test]
    fn the_writer_makes_ordered_files_of_whole_records() {
        let dir = std::env::temp_dir().join(format!(
            "pipe-tb-{}-{}",
            std::process::id(),
            crate::store::temp_name("t")
        ));
        let mut a = EventWriter::create(&dir).unwrap();
        a.session_start(0).unwrap();
        a.scalars(0, &[("loss/train", 4.25), ("grad_norm", f32::NAN)])
            .unwrap();
        let mut b = EventWriter::create(&dir).unwrap();
        b.session_start(0).unwrap();
        let name = |w: &EventWriter| w.path().file_name().unwrap().to_string_lossy().to_string();
        assert!(name(&a) < name(&b), "{} {}", name(&a), name(&b));
        assert!(name(&a).starts_with("events.out.tfevents."));
        let secs = |n: &str| n.split('.').nth(3).unwrap().parse::<u64>().unwrap();
        assert!(secs(&name(&b)) > secs(&name(&a)));

        let events: Vec<Event> = records(&fs::read(a.path()).unwrap())
            .iter()
            .map(|r| Event::decode(&r[..]).unwrap())
            .collect();
        assert_eq!(events.len(), 3);
        assert_eq!(
            events[0].what,
            Some(What::FileVersion("brain.Event:2".into()))
        );
        assert!(events[0].wall_time > 1e9);
        assert_eq!(
            events[1].what,
            Some(What::SessionLog(SessionLog { status: START }))
        );
        // The NaN was left out.
        assert_eq!(
            events[2].what,
            Some(What::Summary(Summary {
                value: vec![Value {
                    tag: "loss/train".into(),
                    simple_value: Some(4.25)
                }]
            }))
        );
        fs::remove_dir_all(dir).unwrap();
    }
}
