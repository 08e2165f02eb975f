//! [`FileBytes`]: a plugin file read whole into memory from the system allocator.
//!
//! A plugin file is read whole (to check it, hash it and copy it as one snapshot),
//! often megabytes with debug info, and freed right after. Whatever the process's
//! global allocator is, this buffer comes from the system's (glibc hands a block
//! this large back to the kernel when it is freed). An allocator that keeps freed
//! memory until it next purges (mimalloc) would otherwise leave an idle subworker
//! holding the size of its plugin for good.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    fs::File,
    io::{self, Read},
    path::Path,
    ptr::NonNull,
};

/// The bytes of a file, in a buffer of the system allocator.
pub struct FileBytes {
    ptr: NonNull<u8>,
    len: usize,
    capacity: usize,
}

// SAFETY: FileBytes owns its buffer exclusively (like a Vec<u8>); nothing else holds
// the pointer.
unsafe impl Send for FileBytes {}
// SAFETY: shared access only reads the buffer.
unsafe impl Sync for FileBytes {}

impl FileBytes {
    /// Reads `path` whole. A file that grows while it is read is read to its end.
    pub fn read(path: &Path) -> io::Result<FileBytes> {
        let mut file = File::open(path)?;
        let expected = usize::try_from(file.metadata()?.len())
            .map_err(|_| io::Error::other("the file is larger than this machine's memory"))?;
        let mut bytes = FileBytes::with_capacity(expected)?;
        bytes.fill_from(&mut file)?;
        // Grown since its size was read: the rest, in a larger buffer.
        let mut probe = [0u8; 1];
        if file.read(&mut probe)? == 1 {
            let mut rest = vec![probe[0]];
            file.read_to_end(&mut rest)?;
            let mut larger = FileBytes::with_capacity(bytes.len + rest.len())?;
            larger.extend(&bytes);
            larger.extend(&rest);
            bytes = larger;
        }
        Ok(bytes)
    }

    fn with_capacity(capacity: usize) -> io::Result<FileBytes> {
        if capacity == 0 {
            return Ok(FileBytes {
                ptr: NonNull::dangling(),
                len: 0,
                capacity: 0,
            });
        }
        let layout = Layout::array::<u8>(capacity).map_err(io::Error::other)?;
        // SAFETY: the layout's size is not zero (checked above). Zeroed, so every
        // byte is initialized before a slice is made of it (and calloc of a large
        // block gets zero pages from the kernel without touching them).
        let raw = unsafe { System.alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::OutOfMemory,
                format!("cannot hold a file of {capacity} bytes"),
            )
        })?;
        Ok(FileBytes {
            ptr,
            len: 0,
            capacity,
        })
    }

    /// Reads from `file` until the buffer is full or the file ends.
    fn fill_from(&mut self, file: &mut File) -> io::Result<()> {
        while self.len < self.capacity {
            // SAFETY: the range [len, capacity) lies inside the allocation, was
            // zeroed when allocated, and nothing else refers to it.
            let spare = unsafe {
                std::slice::from_raw_parts_mut(
                    self.ptr.as_ptr().add(self.len),
                    self.capacity - self.len,
                )
            };
            match file.read(spare) {
                Ok(0) => break,
                Ok(n) => self.len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Appends `more`, which must fit in the capacity left.
    fn extend(&mut self, more: &[u8]) {
        let n = more.len().min(self.capacity - self.len);
        // SAFETY: [len, len + n) lies inside the allocation and does not overlap
        // `more`, which is another buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(more.as_ptr(), self.ptr.as_ptr().add(self.len), n);
        }
        self.len += n;
    }
}

impl std::ops::Deref for FileBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: the first `len` bytes were written by `fill_from` or `extend`; a
        // zero-length buffer uses a dangling, aligned pointer, valid for length 0.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for FileBytes {
    fn drop(&mut self) {
        if self.capacity == 0 {
            return;
        }
        if let Ok(layout) = Layout::array::<u8>(self.capacity) {
            // SAFETY: allocated by `System` with this same layout in `with_capacity`.
            unsafe { System.dealloc(self.ptr.as_ptr(), layout) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_file_whole_empty_or_not() {
        let dir = std::env::temp_dir().join(format!("fw-file-bytes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.join("big"), &big).unwrap();
        std::fs::write(dir.join("empty"), b"").unwrap();
        assert_eq!(&FileBytes::read(&dir.join("big")).unwrap()[..], &big[..]);
        assert!(FileBytes::read(&dir.join("empty")).unwrap().is_empty());
        assert_eq!(
            FileBytes::read(&dir.join("missing"))
                .err()
                .map(|e| e.kind()),
            Some(io::ErrorKind::NotFound)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
