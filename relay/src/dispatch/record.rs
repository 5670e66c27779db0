//! A consumed record, owned, as the dispatcher carries it from the consumer to the sink (and maybe
//! to the dead-letter topic).

use bytes::Bytes;

use super::scheduler::PartitionId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHeader {
    /// UTF-8, as Kafka header names are.
    pub name: Bytes,
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
    /// Copies a message into one buffer that key, value and headers are slices of: two
    /// allocations per record, whatever its number of headers.
    pub fn copy_from<'a>(
        partition: PartitionId,
        offset: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: impl Iterator<Item = (&'a str, Option<&'a [u8]>)> + Clone,
    ) -> Record {
        let header_bytes: usize = headers.clone().map(|(name, value)| name.len() + value.map_or(0, <[u8]>::len)).sum();
        let mut buffer = Vec::with_capacity(key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len) + header_bytes);
        let mut place = |part: &[u8]| {
            let start = buffer.len();
            buffer.extend_from_slice(part);
            start..buffer.len()
        };
        let key = key.map(&mut place);
        let value = value.map(&mut place);
        let headers: Vec<_> = headers.map(|(name, value)| (place(name.as_bytes()), value.map(&mut place))).collect();
        let buffer = Bytes::from(buffer);
        Record {
            partition,
            offset,
            key: key.map(|range| buffer.slice(range)),
            value: value.map(|range| buffer.slice(range)),
            headers: headers
                .into_iter()
                .map(|(name, value)| RecordHeader { name: buffer.slice(name), value: value.map(|range| buffer.slice(range)) })
                .collect(),
        }
    }

    /// What the record weighs in the dispatcher's buffer: payloads plus a fixed overhead.
    pub fn weight(&self) -> usize {
        let headers: usize = self.headers.iter().map(|header| header.name.len() + header.value.as_ref().map_or(0, Bytes::len) + 32).sum();
        self.key.as_ref().map_or(0, Bytes::len) + self.value.as_ref().map_or(0, Bytes::len) + headers + 128
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copied_record_keeps_every_part_and_null_apart_from_empty() {
        let headers = [("ce_id", Some(&b"e-1"[..])), ("empty", Some(&b""[..])), ("null", None)];
        let record = Record::copy_from(PartitionId(3), 41, Some(b"k"), None, headers.iter().copied());
        assert_eq!((record.partition, record.offset), (PartitionId(3), 41));
        assert_eq!(record.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(record.value, None);
        let headers: Vec<(&[u8], Option<&[u8]>)> =
            record.headers.iter().map(|header| (&header.name[..], header.value.as_deref())).collect();
        assert_eq!(headers, [(&b"ce_id"[..], Some(&b"e-1"[..])), (b"empty", Some(b"")), (b"null", None)]);
        assert_eq!(record.weight(), 1 + (5 + 3 + 32) + (5 + 32) + (4 + 32) + 128);
    }
}
