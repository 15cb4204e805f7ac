//! The scenario parser: any text either makes a scenario or is refused with one plain line
//! that names the file and the place.
#![no_main]

use std::path::Path;

use chaos_user::experiment::scenario::parse;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = parse(Path::new("/fuzz/scenario.toml"), text) {
        let message = e.to_string();
        assert!(
            message.starts_with("/fuzz/scenario.toml:"),
            "{text:?}: {message:?} does not say where"
        );
        assert!(
            !message.contains('\n'),
            "{text:?}: {message:?} is not one line"
        );
    }
});
