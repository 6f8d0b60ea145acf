//! Files a test makes and must not leave behind.

use std::path::PathBuf;

/// A new path in the temp directory (`gaia-test-{uuid}.{extension}`), removed on drop
/// with SQLite's `-wal` and `-shm` beside it.
pub struct TempFile {
    pub path: PathBuf,
}

impl TempFile {
    pub fn new(extension: &str) -> Self {
        Self { path: std::env::temp_dir().join(format!("gaia-test-{}.{extension}", uuid::Uuid::new_v4())) }
    }

    /// A SQLite URL of the file, for `SqlStore::connect` or `GAIA_DATABASE_URL`.
    pub fn sqlite_url(&self) -> String {
        format!("sqlite:{}", self.path.display())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut path = self.path.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_and_its_sqlite_companions_go_with_it() {
        let file = TempFile::new("db");
        let wal = format!("{}-wal", file.path.display());
        std::fs::write(&file.path, b"x").unwrap_or_default();
        std::fs::write(&wal, b"x").unwrap_or_default();
        let path = file.path.clone();
        assert!(file.sqlite_url().starts_with("sqlite:/"));
        drop(file);
        assert!(!path.exists() && !std::path::Path::new(&wal).exists());
    }
}
