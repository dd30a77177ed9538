//! Invite parsing on any text.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(invite) = sync_client::Invite::decode(&text) {
        // Whatever parses re-encodes to something that parses the same.
        assert_eq!(
            sync_client::Invite::decode(&invite.encode()).unwrap(),
            invite
        );
    }
});
