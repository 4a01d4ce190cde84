//! Sets `cfg(twenty_live)` when the tests target a live Twenty
//! (`TWENTY_BASE_URL` set), so the tests that need the fake report
//! themselves as ignored rather than passing having done nothing.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(twenty_live)");
    println!("cargo::rerun-if-env-changed=TWENTY_BASE_URL");
    if std::env::var("TWENTY_BASE_URL").is_ok_and(|v| !v.trim().is_empty()) {
        println!("cargo::rustc-cfg=twenty_live");
    }
}
