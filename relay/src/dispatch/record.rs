//! A consumed record, owned, as the dispatcher carries it from the consumer to the sink (and maybe
//! to the dead-letter topic).

use bytes::Bytes;

use super::scheduler::PartitionId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHeader {
    pub name: String,
    /// Kafka allows null header values.
    pub value: Option<Bytes>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub partition: PartitionId,
    pub offset: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<RecordHeader>,
}

impl Record {
    /// The value of the first header called `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|header| header.name == name).and_then(|header| header.value.as_deref())
    }

    /// What the record weighs in the dispatcher's buffer: payloads plus a fixed overhead.
    pub fn weight(&self) -> usize {
        let headers: usize = self.headers.iter().map(|header| header.name.len() + header.value.as_ref().map_or(0, Bytes::len) + 32).sum();
        self.key.as_ref().map_or(0, Bytes::len) + self.value.as_ref().map_or(0, Bytes::len) + headers + 128
    }
}
