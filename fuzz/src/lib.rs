//! Helpers shared by the fuzz targets in fuzz_targets/: the script format of the STARTTLS targets and the checker
//! that judges a STARTTLS engine's steps. They must never call into the code under test to decide what is right:
//! every expectation here is worked out on its own, from the RFCs and the manual.

pub mod script;
pub mod starttls_checker;
