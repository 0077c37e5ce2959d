//! Scratch directories: one process's temporary files (a merge's index
//! object past its memory budget, a restore's sorted runs, an export's
//! Parquet files before upload), under the system's temporary directory.
//!
//! Each is removed when it is dropped. A process killed before that (by
//! the OOM killer, `kill -9`, a container stop) never drops it, and a
//! sidecar restarted that way would fill its disk with the leftovers of
//! its large merges. So each directory holds a lock file that its process
//! keeps locked (`flock`, which the kernel releases when the process ends,
//! however it ends), and every new scratch directory first removes those
//! under the same parent whose lock nobody holds. A directory is made
//! under a hidden name, locked, then renamed into view, so a sweep never
//! sees one before its lock is held. Where the file system cannot lock, a
//! directory is never swept: a leftover is better than removing a live
//! process's files.

use crate::Error;
use std::fs::File;
use std::path::{Path, PathBuf};

/// The names of scratch directories start with this.
const PREFIX: &str = "waly-scratch-";

/// The lock file inside each.
const LOCK: &str = ".lock";

/// A directory of this process's temporary files, removed when dropped.
#[derive(Debug)]
pub struct Scratch {
    dir: PathBuf,
    /// Locked for as long as this lives (and the process with it).
    _lock: File,
}

impl Scratch {
    /// A new scratch directory under the system's temporary directory,
    /// named for `purpose` (after sweeping dead processes' ones).
    pub fn new(purpose: &str) -> Result<Scratch, Error> {
        Scratch::new_in(&std::env::temp_dir(), purpose)
    }

    /// A new scratch directory under `parent`, after sweeping those of
    /// dead processes there.
    pub fn new_in(parent: &Path, purpose: &str) -> Result<Scratch, Error> {
        sweep(parent);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let name = format!("{PREFIX}{purpose}-{}-{nanos}", std::process::id());
        let hidden = parent.join(format!(".{name}"));
        std::fs::create_dir_all(parent)?;
        std::fs::create_dir(&hidden)?;
        let made = (|| {
            let lock = File::create(hidden.join(LOCK))?;
            match lock.try_lock() {
                Ok(()) | Err(std::fs::TryLockError::Error(_)) => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(Error::Contended(format!(
                        "the new scratch directory {} is locked by another process",
                        hidden.display()
                    )))
                }
            }
            let dir = parent.join(&name);
            std::fs::rename(&hidden, &dir)?;
            Ok(Scratch { dir, _lock: lock })
        })();
        if made.is_err() {
            let _ = std::fs::remove_dir_all(&hidden);
        }
        made
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // The lock is released after this (fields drop after `drop`), so a
        // sweep never takes a directory that is being removed.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sorted runs of one level merged into one of the next once there are
/// this many (the restore's and the snapshot index's runs): a merge then
/// reads at most this many runs per level at once, whatever the input's size.
pub const RUNS_PER_LEVEL: usize = 16;

/// Of runs whose levels are `levels` (in the order written, never
/// increasing), the trailing ones to merge into one run of the next level:
/// `(position of the first, their level)` when the last level holds
/// [`RUNS_PER_LEVEL`].
pub fn full_level(levels: &[u32]) -> Option<(usize, u32)> {
    let level = *levels.last()?;
    let same = levels.iter().rev().take_while(|l| **l == level).count();
    (same >= RUNS_PER_LEVEL).then(|| (levels.len() - same, level))
}

/// Fills `buf` from `r`, a run file of a scratch directory: `Ok(false)`
/// when `r` ends before its first byte, an error when it ends inside (a
/// run cut short is never taken for a shorter one).
pub fn read_exact_or_end(r: &mut impl std::io::Read, buf: &mut [u8]) -> Result<bool, Error> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    match got {
        0 => Ok(false),
        n if n == buf.len() => Ok(true),
        _ => Err(Error::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "a temporary run file ends inside a record",
        ))),
    }
}

/// Removes the scratch directories under `parent` whose lock no process
/// holds (their process is gone); how many it removed. Best effort: what
/// cannot be read or removed is left.
pub fn sweep(parent: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(PREFIX) {
            continue;
        }
        let dir = entry.path();
        // No lock file: not a scratch directory, or one being removed.
        let Ok(lock) = File::open(dir.join(LOCK)) else { continue };
        if lock.try_lock().is_ok() && std::fs::remove_dir_all(&dir).is_ok() {
            tracing::info!(dir = %dir.display(), "removed the scratch directory of a process that ended without removing it");
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_cut_inside_a_record_is_an_error_not_its_end() {
        let mut buf = [0u8; 4];
        let mut whole: &[u8] = &[1, 2, 3, 4];
        assert!(read_exact_or_end(&mut whole, &mut buf).expect("whole"));
        assert_eq!(buf, [1, 2, 3, 4]);
        assert!(!read_exact_or_end(&mut whole, &mut buf).expect("at the end"));
        let mut cut: &[u8] = &[1, 2];
        assert!(read_exact_or_end(&mut cut, &mut buf).is_err());
    }

    fn parent(name: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        std::env::temp_dir().join(format!("waly-{name}-{}-{nanos}", std::process::id()))
    }

    /// A killed process's scratch directory (its lock held by a real
    /// process, then released by the kernel when that process is killed)
    /// is kept while the process lives and removed by the next scratch
    /// directory made after it died; a live one is never removed.
    #[test]
    fn a_killed_processs_scratch_directory_is_swept_and_a_live_ones_is_kept() {
        let parent = parent("scratch-test");
        let live = Scratch::new_in(&parent, "live").expect("scratch");
        std::fs::write(live.path().join("run-000000"), b"sorted").expect("write");
        // The other process's directory, made as `Scratch` makes one.
        let dead = parent.join(format!("{PREFIX}index-1-1"));
        std::fs::create_dir_all(&dead).expect("mkdir");
        std::fs::write(dead.join("merge.idx"), vec![0u8; 4096]).expect("write");
        // The process holding its lock: one process, no child to inherit it.
        let hold =
            "import fcntl, sys, time\nf = open(sys.argv[1], 'a')\nfcntl.flock(f, fcntl.LOCK_EX)\ntime.sleep(600)";
        struct Holder(std::process::Child);
        impl Drop for Holder {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let holder = Holder(
            std::process::Command::new("python3")
                .args(["-c", hold])
                .arg(dead.join(LOCK))
                .spawn()
                .expect("python3 runs"),
        );
        // Until it holds the lock, a sweep would take the directory.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !File::open(dead.join(LOCK)).is_ok_and(|f| f.try_lock().is_err()) {
            assert!(std::time::Instant::now() < deadline, "the holder never took the lock");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(sweep(&parent), 0, "a locked directory is its living process's");
        assert!(dead.join("merge.idx").exists() && live.path().join("run-000000").exists());
        // Killed (and waited for): the next scratch directory sweeps its
        // directory, not the live one.
        drop(holder);
        let next = Scratch::new_in(&parent, "next").expect("scratch");
        assert!(!dead.exists(), "the killed process's directory is removed");
        assert!(live.path().join("run-000000").exists(), "the live one is kept");
        assert_eq!(sweep(&parent), 0);
        let (live_dir, next_dir) = (live.path().to_path_buf(), next.path().to_path_buf());
        drop(live);
        drop(next);
        assert!(!live_dir.exists() && !next_dir.exists(), "each goes with its owner");
        assert_eq!(std::fs::read_dir(&parent).expect("list").count(), 0);
        std::fs::remove_dir(&parent).expect("empty");
    }

    /// Entries that are not scratch directories, and scratch directories
    /// without a lock file, are never removed.
    #[test]
    fn a_sweep_removes_only_scratch_directories_whose_lock_is_free() {
        let parent = parent("sweep-test");
        std::fs::create_dir_all(parent.join("waly-export-1-1")).expect("mkdir");
        std::fs::create_dir_all(parent.join(format!("{PREFIX}restore-1-1"))).expect("mkdir");
        let free = parent.join(format!("{PREFIX}restore-2-2"));
        std::fs::create_dir_all(&free).expect("mkdir");
        std::fs::write(free.join(LOCK), b"").expect("lock file");
        assert_eq!(sweep(&parent), 1);
        assert!(!free.exists());
        assert!(parent.join("waly-export-1-1").exists());
        assert!(parent.join(format!("{PREFIX}restore-1-1")).exists());
        std::fs::remove_dir_all(&parent).expect("clean up");
    }
}
