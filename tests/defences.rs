//! The test binary of the service under attack: keys, signatures and connection limits
//! (`security`), the hostile-input catalogue (`hostile`), floods of renders on request
//! (`renders`), and webhook receivers and direct uploads that do not stop (`outbound`). Tests here that assert on the
//! process's resident memory hold `common::RSS_SERIAL`, so no two of them run at once.

mod common;

mod hostile;
mod outbound;
mod renders;
mod security;
