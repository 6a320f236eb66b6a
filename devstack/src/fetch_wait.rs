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

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, FetchRequest, FetchResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::Decodable;

/// How often a held Fetch asks the broker again: the most latency the long poll adds when
/// records arrive while a Fetch is held.
pub const REPOLL: Duration = Duration::from_millis(10);

/// The longest frame relayed (noida-db's own limit).
const MAX_FRAME: usize = 100 * 1024 * 1024;

/// Relay one client connection to the broker at `upstream` until either side closes it.
pub fn relay(client: TcpStream, upstream: SocketAddr) -> io::Result<()> {
    client.set_nodelay(true)?;
    let broker = TcpStream::connect(upstream)?;
    broker.set_nodelay(true)?;
    let (mut from_client, mut to_client) = (BufReader::new(&client), BufWriter::new(&client));
    let (mut from_broker, mut to_broker) = (BufReader::new(&broker), BufWriter::new(&broker));
    let result = (|| loop {
        let Some(request) = read_frame(&mut from_client)? else {
            return Ok(());
        };
        write_frame(&mut to_broker, &request)?;
        let mut response = read_frame(&mut from_broker)?.ok_or_else(closed)?;
        if let Some(wait) = fetch_wait(&request) {
            let deadline = Instant::now() + wait;
            while fetch_found_nothing(&request, &response) {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                std::thread::sleep(REPOLL.min(deadline - now));
                write_frame(&mut to_broker, &request)?;
                response = read_frame(&mut from_broker)?.ok_or_else(closed)?;
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

fn read_frame(r: &mut impl Read) -> io::Result<Option<Bytes>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
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

/// How long Kafka would hold this request if it found no records: `max_wait_ms` of a Fetch;
/// `None` for any other request (or one that does not decode: passed through as it is).
fn fetch_wait(request: &[u8]) -> Option<Duration> {
    let (ApiKey::Fetch, version) = api(request)? else {
        return None;
    };
    let mut buf = BytesMut::from(request);
    RequestHeader::decode(&mut buf, ApiKey::Fetch.request_header_version(version)).ok()?;
    let fetch = FetchRequest::decode(&mut buf, version).ok()?;
    (fetch.max_wait_ms > 0).then(|| Duration::from_millis(fetch.max_wait_ms as u64))
}

/// Whether a Fetch's response carries no records and no error: the case Kafka holds.
fn fetch_found_nothing(request: &[u8], response: &[u8]) -> bool {
    let Some((ApiKey::Fetch, version)) = api(request) else {
        return false;
    };
    let mut buf = BytesMut::from(response);
    if ResponseHeader::decode(&mut buf, ApiKey::Fetch.response_header_version(version)).is_err() {
        return false;
    }
    let Ok(fetch) = FetchResponse::decode(&mut buf, version) else {
        return false;
    };
    fetch.error_code == 0
        && fetch.responses.iter().all(|topic| {
            topic.partitions.iter().all(|p| {
                p.error_code == 0 && p.records.as_ref().is_none_or(|records| records.is_empty())
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::protocol::{Encodable, StrBytes};

    const VERSION: i16 = 11;

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
