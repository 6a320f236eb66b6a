//! Round-robin scheduling between users: one user uploading 2,000 photos must not make another
//! user's single photo wait behind all of them.

use std::collections::{HashMap, VecDeque};

/// Per-user FIFO queues served in rotation.
#[derive(Debug)]
pub struct FairQueue<T> {
    queues: HashMap<String, VecDeque<T>>,
    /// Users with queued work, in service order.
    rotation: VecDeque<String>,
    len: usize,
}

impl<T> Default for FairQueue<T> {
    fn default() -> Self {
        Self {
            queues: HashMap::new(),
            rotation: VecDeque::new(),
            len: 0,
        }
    }
}

impl<T> FairQueue<T> {
    pub fn push(&mut self, user: &str, item: T) {
        let q = self.queues.entry(user.to_string()).or_default();
        if q.is_empty() {
            self.rotation.push_back(user.to_string());
        }
        q.push_back(item);
        self.len += 1;
    }

    /// The next item: the head of the next user's queue in the rotation.
    pub fn pop(&mut self) -> Option<T> {
        let user = self.rotation.pop_front()?;
        let q = self
            .queues
            .get_mut(&user)
            .expect("rotated users have queues");
        let item = q.pop_front().expect("rotated users have work");
        if q.is_empty() {
            self.queues.remove(&user);
        } else {
            self.rotation.push_back(user);
        }
        self.len -= 1;
        Some(item)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alternates_between_users_and_keeps_each_users_order() {
        let mut q = FairQueue::default();
        for i in 0..4 {
            q.push("big", format!("big{i}"));
        }
        q.push("small", "small0".to_string());
        q.push("small", "small1".to_string());
        let order: Vec<String> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(order, ["big0", "small0", "big1", "small1", "big2", "big3"]);
        assert!(q.is_empty());
    }
}
