//! A fixed-capacity ring: storage allocated once, at the first point, then
//! overwritten in place.

/// A fixed-capacity ring: the oldest point is overwritten.
#[derive(Debug)]
pub struct Ring<T> {
    buf: Vec<T>,
    cap: usize,
    /// Where the next point goes once `buf` is full.
    head: usize,
}

impl<T: Copy> Ring<T> {
    pub fn new(cap: usize) -> Self {
        Ring {
            buf: Vec::new(),
            cap: cap.max(1),
            head: 0,
        }
    }

    pub fn push(&mut self, point: T) {
        if self.buf.capacity() == 0 {
            // Once, at the first point: rings of nodes never sampled cost
            // nothing.
            self.buf.reserve_exact(self.cap);
        }
        if self.buf.len() < self.cap {
            self.buf.push(point);
        } else {
            self.buf[self.head] = point;
            self.head = (self.head + 1) % self.cap;
        }
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        let (newer, older) = self.buf.split_at(self.head.min(self.buf.len()));
        older.iter().chain(newer.iter())
    }

    pub fn last(&self) -> Option<&T> {
        if self.buf.len() < self.cap || self.head == 0 {
            self.buf.last()
        } else {
            self.buf.get(self.head - 1)
        }
    }

    /// Bytes held (the allocation, not the points in use).
    pub fn heap_bytes(&self) -> usize {
        self.buf.capacity() * std::mem::size_of::<T>()
    }
}
