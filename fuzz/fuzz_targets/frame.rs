//! Frame reader: any byte stream, any limit: frames are refused or read,
//! never a panic, never an allocation beyond the limit.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((limit, stream)) = data.split_first_chunk::<2>() else { return };
    let max = u32::from(u16::from_be_bytes(*limit));
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        let mut r = stream;
        while let Ok(Some(_)) = sync_protocol::read_message(&mut r, max).await {}
    });
});
