//! Kafka's Fetch long poll, in front of the embedded broker.
//!
//! Kafka holds a Fetch that finds no records for up to the request's `max_wait_ms` (librdkafka's
//! `fetch.wait.max.ms`, 500 ms by default) and answers as soon as records arrive. noida-db
//! answers at once, so every idle librdkafka consumer fetched again immediately, in a loop: on
//! this 2-core machine an idle status-api and the broker burned about 100 CPU-seconds each in a
//! ten-minute load test, CPU the pipeline being measured did not get. [`relay`] sits between a
//! client and the broker and gives Fetch Kafka's behaviour back: an empty answer is held, and
//! the same request re-asked every [`REPOLL`], until records (or an error) come or the
//! request's wait is up. Every other request passes through untouched, one at a time per
//! connection, in order, as a Kafka broker handles a connection. noida-db keeps no fetch
//! sessions, so asking the same Fetch again is harmless.
//!
//! noida-db also answers a Fetch with a partition's whole backlog, ignoring the request's
//! `max_bytes` and each partition's `partition_max_bytes`. On a large backlog (status-api's
//! start-up replay of 1,000,000 events) that answer outgrew the largest frame relayed and
//! librdkafka's `receive.message.max.bytes`: the connection failed, the client asked again,
//! and the replay stalled for good. [`limit_fetch_response`] gives Fetch Kafka's size limits
//! back (KIP-74): whole record batches, at most `partition_max_bytes` per partition and
//! `max_bytes` in all, except that the first batch of the first non-empty partition is always
//! sent so the consumer makes progress.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, FetchRequest, FetchResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable};

/// How often a held Fetch asks the broker again: the most latency the long poll adds when
/// records arrive while a Fetch is held.
pub const REPOLL: Duration = Duration::from_millis(10);

/// The longest request relayed (noida-db's own limit).
const MAX_FRAME: usize = 100 * 1024 * 1024;

/// The longest answer read from noida-db (a Fetch answer is a partition's whole backlog before
/// [`limit_fetch_response`] cuts it to the client's limits).
const MAX_BROKER_FRAME: usize = 2000 * 1024 * 1024;

/// Relay one client connection to the broker at `upstream` until either side closes it.
pub fn relay(client: TcpStream, upstream: SocketAddr) -> io::Result<()> {
    client.set_nodelay(true)?;
    let broker = TcpStream::connect(upstream)?;
    broker.set_nodelay(true)?;
    let (mut from_client, mut to_client) = (BufReader::new(&client), BufWriter::new(&client));
    let (mut from_broker, mut to_broker) = (BufReader::new(&broker), BufWriter::new(&broker));
    let result = (|| loop {
        let Some(request) = read_frame(&mut from_client, MAX_FRAME)? else {
            return Ok(());
        };
        write_frame(&mut to_broker, &request)?;
        let mut response = read_frame(&mut from_broker, MAX_BROKER_FRAME)?.ok_or_else(closed)?;
        // A Fetch is decoded once, and each of its answers once (records are not copied).
        if let Some(fetch) = Fetch::decode(&request) {
            let mut answer = fetch.answer(&response);
            if let Some(wait) = fetch.max_wait() {
                let deadline = Instant::now() + wait;
                while answer.as_ref().is_some_and(|(_, a)| found_nothing(a)) {
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    std::thread::sleep(REPOLL.min(deadline - now));
                    write_frame(&mut to_broker, &request)?;
                    response =
                        read_frame(&mut from_broker, MAX_BROKER_FRAME)?.ok_or_else(closed)?;
                    answer = fetch.answer(&response);
                }
            }
            if let Some((header, answer)) = answer {
                response = fetch.limit(header, answer).unwrap_or(response);
            }
        }
        write_frame(&mut to_client, &response)?;
    })();
    let _ = broker.shutdown(std::net::Shutdown::Both);
    result
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "broker closed the connection")
}

fn read_frame(r: &mut impl Read, max: usize) -> io::Result<Option<Bytes>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("Kafka frame of {len} bytes"),
        ));
    }
    let mut frame = vec![0u8; len];
    r.read_exact(&mut frame)?;
    Ok(Some(Bytes::from(frame)))
}

fn write_frame(w: &mut impl Write, frame: &[u8]) -> io::Result<()> {
    w.write_all(&(frame.len() as u32).to_be_bytes())?;
    w.write_all(frame)?;
    w.flush()
}

/// The request's API key and version, read from the first four bytes of every request header.
fn api(request: &[u8]) -> Option<(ApiKey, i16)> {
    let key = i16::from_be_bytes(request.get(0..2)?.try_into().ok()?);
    let version = i16::from_be_bytes(request.get(2..4)?.try_into().ok()?);
    Some((ApiKey::try_from(key).ok()?, version))
}

/// A Fetch request, decoded: its version and body.
struct Fetch {
    version: i16,
    request: FetchRequest,
}

impl Fetch {
    /// `None` for any other request, or one that does not decode (passed through as it is).
    fn decode(request: &[u8]) -> Option<Self> {
        let (ApiKey::Fetch, version) = api(request)? else {
            return None;
        };
        let mut buf = request;
        RequestHeader::decode(&mut buf, ApiKey::Fetch.request_header_version(version)).ok()?;
        let request = FetchRequest::decode(&mut buf, version).ok()?;
        Some(Self { version, request })
    }

    /// How long Kafka would hold this request if it found no records (`max_wait_ms`).
    fn max_wait(&self) -> Option<Duration> {
        let ms = self.request.max_wait_ms;
        (ms > 0).then(|| Duration::from_millis(ms as u64))
    }

    /// The broker's answer to it, decoded without copying the records; `None` if it does not
    /// decode (then passed through as it is).
    fn answer(&self, response: &Bytes) -> Option<(ResponseHeader, FetchResponse)> {
        let mut buf = response.clone();
        let header = ResponseHeader::decode(
            &mut buf,
            ApiKey::Fetch.response_header_version(self.version),
        )
        .ok()?;
        let answer = FetchResponse::decode(&mut buf, self.version).ok()?;
        Some((header, answer))
    }

    /// The answer cut to this request's size limits, as Kafka sizes it (see the module doc);
    /// `None` when it is within them already (or cannot be encoded): send it as it came.
    fn limit(&self, header: ResponseHeader, mut answer: FetchResponse) -> Option<Bytes> {
        let (version, fetch) = (self.version, &self.request);
        // Before version 3 a Fetch had no overall limit.
        let max_bytes = if version >= 3 && fetch.max_bytes > 0 {
            fetch.max_bytes as usize
        } else {
            usize::MAX
        };
        // noida-db answers the topics in the request's order; else the smallest limit asked.
        let smallest = fetch
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| p.partition_max_bytes))
            .filter(|&b| b > 0)
            .min()
            .unwrap_or(i32::MAX);
        let same_shape = fetch.topics.len() == answer.responses.len();
        let mut total = 0usize;
        let mut cut = false;
        for (ti, topic) in answer.responses.iter_mut().enumerate() {
            for p in topic.partitions.iter_mut() {
                let Some(records) = p.records.as_ref().filter(|r| !r.is_empty()) else {
                    continue;
                };
                let limit = same_shape
                    .then(|| {
                        fetch.topics[ti]
                            .partitions
                            .iter()
                            .find(|q| q.partition == p.partition_index)
                            .map(|q| q.partition_max_bytes)
                    })
                    .flatten()
                    .filter(|&b| b > 0)
                    .unwrap_or(smallest) as usize;
                let budget = limit.min(max_bytes.saturating_sub(total));
                let keep = whole_batches_within(records, budget, total == 0);
                if keep < records.len() {
                    p.records = Some(records.slice(..keep));
                    cut = true;
                }
                total += keep;
            }
        }
        if !cut {
            return None;
        }
        let mut out = BytesMut::new();
        header
            .encode(&mut out, ApiKey::Fetch.response_header_version(version))
            .and_then(|()| answer.encode(&mut out, version))
            .ok()?;
        Some(out.freeze())
    }
}

/// Whether a Fetch answer carries no records and no error: the case Kafka holds.
fn found_nothing(answer: &FetchResponse) -> bool {
    answer.error_code == 0
        && answer.responses.iter().all(|topic| {
            topic.partitions.iter().all(|p| {
                p.error_code == 0 && p.records.as_ref().is_none_or(|records| records.is_empty())
            })
        })
}

/// How many leading bytes of `records` are whole record batches totalling at most `budget`
/// (a batch is its 12-byte offset-and-length prefix plus `length` bytes); with `at_least_one`,
/// the first batch even if it alone is over the budget.
fn whole_batches_within(records: &[u8], budget: usize, at_least_one: bool) -> usize {
    let mut end = 0;
    while let Some(len) = records.get(end + 8..end + 12) {
        let len = i32::from_be_bytes(len.try_into().expect("4 bytes")).max(0) as usize;
        let next = end + 12 + len;
        if next > records.len() || (next > budget && !(at_least_one && end == 0)) {
            break;
        }
        end = next;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::protocol::{Encodable, StrBytes};

    const VERSION: i16 = 11;

    /// How long the relay holds `request` when nothing is found (`None`: not held).
    fn fetch_wait(request: &[u8]) -> Option<Duration> {
        Fetch::decode(request)?.max_wait()
    }

    /// Whether the relay would hold `response` to `request`.
    fn fetch_found_nothing(request: &[u8], response: &[u8]) -> bool {
        Fetch::decode(request)
            .and_then(|f| f.answer(&Bytes::copy_from_slice(response)))
            .is_some_and(|(_, a)| found_nothing(&a))
    }

    /// The answer as the relay sends it on.
    fn limit_fetch_response(request: &[u8], response: Bytes) -> Bytes {
        let fetch = Fetch::decode(request).expect("a Fetch");
        let (header, answer) = fetch.answer(&response).expect("an answer");
        fetch.limit(header, answer).unwrap_or(response)
    }

    fn request(max_wait_ms: i32) -> Vec<u8> {
        let mut buf = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(ApiKey::Fetch as i16)
            .with_request_api_version(VERSION)
            .with_correlation_id(7)
            .encode(&mut buf, ApiKey::Fetch.request_header_version(VERSION))
            .unwrap();
        FetchRequest::default()
            .with_max_wait_ms(max_wait_ms)
            .encode(&mut buf, VERSION)
            .unwrap();
        buf.to_vec()
    }

    fn response(records: Option<&'static [u8]>, error_code: i16) -> Vec<u8> {
        let mut buf = BytesMut::new();
        ResponseHeader::default()
            .with_correlation_id(7)
            .encode(&mut buf, ApiKey::Fetch.response_header_version(VERSION))
            .unwrap();
        let partition = PartitionData::default()
            .with_error_code(error_code)
            .with_records(records.map(Bytes::from_static));
        FetchResponse::default()
            .with_responses(vec![FetchableTopicResponse::default()
                .with_topic(TopicName(StrBytes::from_static_str("photos.uploaded")))
                .with_partitions(vec![partition])])
            .encode(&mut buf, VERSION)
            .unwrap();
        buf.to_vec()
    }

    #[test]
    fn a_fetch_is_held_for_its_max_wait() {
        assert_eq!(fetch_wait(&request(500)), Some(Duration::from_millis(500)));
        assert_eq!(fetch_wait(&request(0)), None);
    }

    #[test]
    fn only_an_empty_errorless_fetch_is_held() {
        let req = request(500);
        assert!(fetch_found_nothing(&req, &response(None, 0)));
        assert!(fetch_found_nothing(&req, &response(Some(b""), 0)));
        assert!(!fetch_found_nothing(&req, &response(Some(b"records"), 0)));
        assert!(!fetch_found_nothing(&req, &response(None, 1)));
    }

    /// A record batch of `len` bytes in all (prefix included), base offset `base`.
    fn batch(base: i64, len: usize) -> Vec<u8> {
        let mut b = base.to_be_bytes().to_vec();
        b.extend_from_slice(&((len - 12) as i32).to_be_bytes());
        b.resize(len, 0xab);
        b
    }

    fn fetch_of(partitions: &[(i32, i32)], max_bytes: i32) -> Vec<u8> {
        use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
        let mut buf = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(ApiKey::Fetch as i16)
            .with_request_api_version(VERSION)
            .encode(&mut buf, ApiKey::Fetch.request_header_version(VERSION))
            .unwrap();
        FetchRequest::default()
            .with_max_wait_ms(500)
            .with_max_bytes(max_bytes)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str("t")))
                .with_partitions(
                    partitions
                        .iter()
                        .map(|&(p, max)| {
                            FetchPartition::default()
                                .with_partition(p)
                                .with_partition_max_bytes(max)
                        })
                        .collect(),
                )])
            .encode(&mut buf, VERSION)
            .unwrap();
        buf.to_vec()
    }

    fn answer_of(partitions: Vec<(i32, Vec<u8>)>) -> Bytes {
        let mut buf = BytesMut::new();
        ResponseHeader::default()
            .with_correlation_id(7)
            .encode(&mut buf, ApiKey::Fetch.response_header_version(VERSION))
            .unwrap();
        FetchResponse::default()
            .with_responses(vec![FetchableTopicResponse::default()
                .with_topic(TopicName(StrBytes::from_static_str("t")))
                .with_partitions(
                    partitions
                        .into_iter()
                        .map(|(p, r)| {
                            PartitionData::default()
                                .with_partition_index(p)
                                .with_records(Some(Bytes::from(r)))
                        })
                        .collect(),
                )])
            .encode(&mut buf, VERSION)
            .unwrap();
        buf.freeze()
    }

    fn record_sizes(response: &Bytes) -> Vec<usize> {
        let mut buf = BytesMut::from(&response[..]);
        ResponseHeader::decode(&mut buf, ApiKey::Fetch.response_header_version(VERSION)).unwrap();
        let r = FetchResponse::decode(&mut buf, VERSION).unwrap();
        r.responses[0]
            .partitions
            .iter()
            .map(|p| p.records.as_ref().map_or(0, |r| r.len()))
            .collect()
    }

    #[test]
    fn a_fetch_answer_is_cut_to_whole_batches_within_the_limits() {
        let backlog =
            |base| [batch(base, 400), batch(base + 1, 400), batch(base + 2, 400)].concat();
        // 1,000 bytes a partition: two whole batches each (800), 1,000 in all: 800 + 0.
        let answer = answer_of(vec![(0, backlog(0)), (1, backlog(10))]);
        let limited =
            limit_fetch_response(&fetch_of(&[(0, 1000), (1, 1000)], 1000), answer.clone());
        assert_eq!(record_sizes(&limited), vec![800, 0]);
        // Generous limits: the answer passes unchanged.
        let same = limit_fetch_response(&fetch_of(&[(0, 1 << 20), (1, 1 << 20)], 1 << 20), answer);
        assert_eq!(record_sizes(&same), vec![1200, 1200]);
    }

    #[test]
    fn the_first_batch_is_sent_even_over_the_limit() {
        let answer = answer_of(vec![(0, batch(0, 5000)), (1, batch(5, 5000))]);
        let limited = limit_fetch_response(&fetch_of(&[(0, 1000), (1, 1000)], 100_000), answer);
        assert_eq!(record_sizes(&limited), vec![5000, 0]);
    }

    #[test]
    fn a_partial_trailing_batch_is_not_counted_as_whole() {
        let mut records = batch(0, 100);
        records.extend_from_slice(&batch(1, 100)[..50]);
        assert_eq!(whole_batches_within(&records, 1000, true), 100);
        assert_eq!(whole_batches_within(&records, 50, false), 0);
        assert_eq!(whole_batches_within(&records, 50, true), 100);
    }

    #[test]
    fn other_requests_and_garbage_pass_through() {
        let mut metadata = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(ApiKey::Metadata as i16)
            .with_request_api_version(9)
            .encode(&mut metadata, ApiKey::Metadata.request_header_version(9))
            .unwrap();
        assert_eq!(fetch_wait(&metadata), None);
        assert_eq!(fetch_wait(b"\x00"), None);
        assert!(!fetch_found_nothing(&request(500), b"\x00\x01"));
    }
}
