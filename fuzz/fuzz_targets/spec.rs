//! The fault spec grammar: any text either parses into a spec whose canonical text parses back
//! to the same spec (and makes a plan without panicking), or is refused with one plain line.
#![no_main]

use chaos_user::{plan::Plan, spec::parse_fault};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_fault(text) {
        Ok(spec) => {
            let canonical = spec.to_string();
            let again = parse_fault(&canonical).unwrap_or_else(|e| {
                panic!("{text:?} prints as {canonical:?}, which is refused: {e}")
            });
            assert_eq!(again, spec, "{text:?} prints as {canonical:?}");
            // Alone, every parsed spec makes a plan, or a plain refusal.
            if let Err(e) = Plan::dry(&[spec]) {
                one_line(text, &e.to_string());
            }
        }
        Err(e) => one_line(text, &e.to_string()),
    }
});

/// A refusal: one line that says something.
fn one_line(text: &str, message: &str) {
    assert!(!message.trim().is_empty(), "{text:?}: an empty message");
    assert!(
        !message.contains('\n'),
        "{text:?}: {message:?} is not one line"
    );
}
