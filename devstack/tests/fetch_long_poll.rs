//! The embedded broker long-polls Fetch as Kafka does (`devstack::fetch_wait`): a Fetch that
//! finds nothing is held for its `max_wait_ms`, and answered early once a record arrives.
//! Real broker over TCP, a raw Fetch request, records produced with rdkafka.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{
    ApiKey, FetchRequest, FetchResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

const VERSION: i16 = 11;
const TOPIC: &str = "long-poll";

fn fetch(broker: SocketAddr, offset: i64, max_wait_ms: i32) -> (Duration, usize) {
    let mut buf = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(ApiKey::Fetch as i16)
        .with_request_api_version(VERSION)
        .with_correlation_id(1)
        .encode(&mut buf, ApiKey::Fetch.request_header_version(VERSION))
        .unwrap();
    FetchRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str(TOPIC)))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(1 << 20)])])
        .encode(&mut buf, VERSION)
        .unwrap();
    let mut conn = TcpStream::connect(broker).unwrap();
    let started = Instant::now();
    conn.write_all(&(buf.len() as u32).to_be_bytes()).unwrap();
    conn.write_all(&buf).unwrap();
    let mut len = [0u8; 4];
    conn.read_exact(&mut len).unwrap();
    let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
    conn.read_exact(&mut frame).unwrap();
    let took = started.elapsed();
    let mut frame = BytesMut::from(&frame[..]);
    ResponseHeader::decode(&mut frame, ApiKey::Fetch.response_header_version(VERSION)).unwrap();
    let resp = FetchResponse::decode(&mut frame, VERSION).unwrap();
    let p = &resp.responses[0].partitions[0];
    assert_eq!(p.error_code, 0, "fetch error");
    (took, p.records.as_ref().map_or(0, |r| r.len()))
}

fn produce(broker: SocketAddr, value: &str) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.to_string())
        .create()
        .unwrap();
    producer
        .send(BaseRecord::to(TOPIC).key("k").payload(value))
        .unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();
}

#[test]
fn an_empty_fetch_is_held_and_a_new_record_ends_it() {
    let broker = devstack::spawn_broker("127.0.0.1:0", None).unwrap();
    // The first record creates the topic; fetching past it finds nothing.
    produce(broker, "first");
    let (took, bytes) = fetch(broker, 0, 5_000);
    assert!(bytes > 0, "the first record is fetched");
    assert!(
        took < Duration::from_secs(2),
        "records answer at once ({took:?})"
    );

    let (took, bytes) = fetch(broker, 1, 600);
    assert_eq!(bytes, 0);
    assert!(
        took >= Duration::from_millis(550),
        "an empty fetch is held for its max_wait_ms, as Kafka holds it (answered in {took:?})"
    );

    let producing = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        produce(broker, "second");
    });
    let (took, bytes) = fetch(broker, 1, 20_000);
    producing.join().unwrap();
    assert!(bytes > 0, "the held fetch returns the new record");
    assert!(
        took < Duration::from_secs(10),
        "a held fetch ends when a record arrives, not at max_wait_ms ({took:?})"
    );
}
