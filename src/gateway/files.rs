//! Generated images answered as `url`: held in memory for a short time under an
//! unguessable name, then gone. Nothing is written to disk.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

struct File {
    bytes: actix_web::web::Bytes,
    media_type: String,
    expires_ms: u64,
}

#[derive(Default)]
struct Inner {
    files: HashMap<String, File>,
    order: VecDeque<String>,
    bytes: usize,
}

/// The in-memory store of generated images.
#[derive(Default)]
pub struct ImageFiles {
    inner: Mutex<Inner>,
}

impl ImageFiles {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps an image until `expires_ms`; the oldest go first past `cap_bytes`.
    pub fn put(
        &self,
        name: String,
        bytes: Vec<u8>,
        media_type: String,
        expires_ms: u64,
        cap_bytes: usize,
        now_ms: u64,
    ) {
        let mut g = self.lock();
        let inner = &mut *g;
        inner.bytes += bytes.len();
        inner.order.push_back(name.clone());
        inner.files.insert(
            name,
            File {
                bytes: bytes.into(),
                media_type,
                expires_ms,
            },
        );
        while let Some(oldest) = inner.order.front().cloned() {
            let expired = inner
                .files
                .get(&oldest)
                .is_none_or(|f| f.expires_ms <= now_ms);
            if !expired && inner.bytes <= cap_bytes {
                break;
            }
            inner.order.pop_front();
            if let Some(f) = inner.files.remove(&oldest) {
                inner.bytes -= f.bytes.len();
            }
        }
    }

    /// An image still held, with its media type.
    pub fn get(&self, name: &str, now_ms: u64) -> Option<(actix_web::web::Bytes, String)> {
        let g = self.lock();
        let f = g.files.get(name)?;
        (f.expires_ms > now_ms).then(|| (f.bytes.clone(), f.media_type.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::ImageFiles;

    #[test]
    fn images_expire_and_the_oldest_go_past_the_cap() {
        let f = ImageFiles::default();
        f.put("a".into(), vec![0; 10], "image/png".into(), 100, 25, 0);
        f.put("b".into(), vec![0; 10], "image/png".into(), 200, 25, 0);
        assert!(f.get("a", 50).is_some());
        assert!(f.get("a", 100).is_none(), "expired");
        f.put("c".into(), vec![0; 10], "image/png".into(), 300, 25, 50);
        assert!(f.get("a", 50).is_none(), "evicted past the cap");
        assert!(f.get("b", 50).is_some() && f.get("c", 50).is_some());
    }
}
