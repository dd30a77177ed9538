//! Every message decoder: the frame body decoder and each message type's
//! own decoder. A body `decode_body` accepts must re-encode to the same
//! bytes (one message, one encoding).
#![no_main]
use libfuzzer_sys::fuzz_target;
use sync_protocol::*;

fn each<T: serde::de::DeserializeOwned + serde::Serialize>(data: &[u8]) {
    // postcard alone accepts overlong varints; only `decode_body` promises a
    // canonical encoding. Here: decoding must not panic and must re-encode.
    if let Ok((value, _)) = postcard::take_from_bytes::<T>(data) {
        let _ = postcard::to_allocvec(&value).unwrap();
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = decode_body(data) {
        assert_eq!(encode_body(&msg), data, "one message, one encoding");
    }
    each::<Hello>(data);
    each::<HelloWithToken>(data);
    each::<Welcome>(data);
    each::<Push>(data);
    each::<PushOk>(data);
    each::<Pull>(data);
    each::<PullBatch>(data);
    each::<Ack>(data);
    each::<AckOk>(data);
    each::<Notify>(data);
    each::<ErrorMsg>(data);
    each::<CloseGroup>(data);
    each::<CloseGroupOk>(data);
});
