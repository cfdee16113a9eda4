//! Feeds kiln's side of the sandbox protocol what a hostile guest agent
//! could send: the input is read as frames (every frame that decodes must
//! survive an encode/decode round trip), then as a COPY_OUT answer that
//! the host unpacks, untrusted, into a staging directory; nothing may
//! appear outside it and nothing may panic.
//!
//!     cd proto/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run frames

#![no_main]

use kiln_proto::copy::{unpack, TarReader};
use kiln_proto::{read_msg, Msg};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((msg, used))) = Msg::decode(rest) {
        let again = msg.encode();
        assert_eq!(Msg::decode(&again), Ok(Some((msg, again.len()))));
        rest = &rest[used..];
    }

    let dir = tempfile::tempdir().expect("scratch directory");
    let parent = dir.path().join("dest");
    std::fs::create_dir(&parent).expect("destination directory");
    let mut stream = data;
    let mut tar = TarReader::new(|| read_msg(&mut stream));
    let staged = unpack(&mut tar, &parent, false);
    let _ = tar.drain();
    drop(staged);
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("scratch directory")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(left, ["dest"], "a copy escaped its staging directory");
    assert_eq!(
        std::fs::read_dir(&parent).expect("destination").count(),
        0,
        "the staging directory was not removed"
    );
});
