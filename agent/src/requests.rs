//! Recent requests: async results for `GET /v1/requests/{id}`, and the
//! predictions that `POST /v1/feedback` labels. Bounded: the oldest
//! finished entries go first.

use std::collections::{HashMap, VecDeque};

use serde_json::Value;

#[derive(Debug, Clone)]
pub enum Status {
    Pending,
    Done(Value),
    Failed { status: u16, body: Value },
}

#[derive(Debug, Clone)]
pub struct Record {
    pub status: Status,
    pub model: String,
    pub version: String,
    /// Arg-max of the first output per row, when it has one.
    pub predictions: Option<Vec<usize>>,
    /// The first output's labels, for string feedback.
    pub labels: Vec<String>,
    pub segment: Option<String>,
    pub feedback: bool,
}

#[derive(Debug)]
pub struct Requests {
    cap: usize,
    next: u64,
    map: HashMap<u64, Record>,
    order: VecDeque<u64>,
}

impl Requests {
    pub fn new(cap: usize) -> Self {
        Requests {
            cap: cap.max(1),
            next: 1,
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Registers a request; `None` when every slot holds a pending request
    /// (the caller answers 503).
    pub fn insert(&mut self, record: Record) -> Option<u64> {
        while self.map.len() >= self.cap {
            let pos = self.order.iter().position(|id| {
                !matches!(self.map.get(id).map(|r| &r.status), Some(Status::Pending))
            })?;
            if let Some(id) = self.order.remove(pos) {
                self.map.remove(&id);
            }
        }
        let id = self.next;
        self.next += 1;
        self.map.insert(id, record);
        self.order.push_back(id);
        Some(id)
    }

    pub fn get(&self, id: u64) -> Option<&Record> {
        self.map.get(&id)
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut Record> {
        self.map.get_mut(&id)
    }
}

/// Request ids on the API are `r-{n}`.
pub fn format_id(id: u64) -> String {
    format!("r-{id}")
}

pub fn parse_id(s: &str) -> Option<u64> {
    s.strip_prefix("r-")?.parse().ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rec(status: Status) -> Record {
        Record {
            status,
            model: "m".into(),
            version: "1".into(),
            predictions: None,
            labels: vec![],
            segment: None,
            feedback: false,
        }
    }

    #[test]
    fn the_oldest_finished_request_is_evicted_and_pending_ones_are_kept() {
        let mut r = Requests::new(2);
        let a = r.insert(rec(Status::Pending)).unwrap();
        let b = r.insert(rec(Status::Done(Value::Null))).unwrap();
        let c = r.insert(rec(Status::Pending)).unwrap();
        assert!(r.get(a).is_some());
        assert!(r.get(b).is_none());
        assert!(r.get(c).is_some());
        // Both slots pending: no room.
        assert_eq!(r.insert(rec(Status::Pending)), None);
        assert_eq!(parse_id(&format_id(c)), Some(c));
    }
}
