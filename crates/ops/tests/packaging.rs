//! The example service files in packaging/ are exactly what the generators
//! print for the standard install paths (regenerate them with
//! `UPDATE_PACKAGING=1 cargo test -p contact-sync-ops --test packaging`).

use std::path::{Path, PathBuf};

use contact_sync_ops::{launchd_plist, systemd_unit};

fn packaging_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging")
}

fn check_or_update(name: &str, generated: &str) {
    let path = packaging_dir().join(name);
    if std::env::var_os("UPDATE_PACKAGING").is_some() {
        std::fs::write(&path, generated).expect("write packaging file");
        return;
    }
    let on_disk = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    assert_eq!(
        on_disk, generated,
        "{name} differs from the generator; rerun with UPDATE_PACKAGING=1"
    );
}

#[test]
fn systemd_example_matches_the_generator() {
    let unit = systemd_unit(
        Path::new("/usr/local/bin/contact-sync"),
        Path::new("/etc/contact-sync/config.toml"),
        "contact-sync",
    )
    .unwrap();
    check_or_update("contact-sync.service", &unit);
}

#[test]
fn launchd_example_matches_the_generator() {
    let plist = launchd_plist(
        Path::new("/usr/local/bin/contact-sync"),
        Path::new("/usr/local/etc/contact-sync/config.toml"),
    )
    .unwrap();
    check_or_update("com.contact-sync.plist", &plist);
}
