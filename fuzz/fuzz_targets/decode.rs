//! Fuzz target: the pgoutput decoder and the change assembler never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let buf = bytes::Bytes::copy_from_slice(data);
    let _ = waly::pgoutput::decode(&buf);
    // Feed the same bytes, split at 0xFE, through an assembler as a stream of messages.
    let mut asm = waly::event::Assembler::new();
    let mut out = Vec::new();
    for (i, chunk) in data.split(|&b| b == 0xFE).enumerate() {
        let _ = asm.push(waly::Lsn(i as u64), &bytes::Bytes::copy_from_slice(chunk), &mut out);
    }
});
