//! `--signing-key`: the detached OpenPGP signature beside a download is checked. Keys and
//! signatures are made with the `gpg` command in a throw-away home; the test is skipped (with a
//! message) where gpg is missing.

use crate::common_http;

use std::path::Path;
use std::process::Command;

use common_http::{Server, image, options, sha, xz};
use pibake::acquire::{self, AcquireError};
use pibake::progress::Silent;

fn gpg(home: &Path, args: &[&str]) -> bool {
    Command::new("gpg")
        .env("GNUPGHOME", home)
        .args([
            "--batch",
            "--quiet",
            "--no-tty",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
        ])
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn detached_signature_is_checked() {
    if Command::new("gpg").arg("--version").output().is_err() {
        eprintln!("skipped: gpg is not installed");
        return;
    }
    let home = tempfile::tempdir().unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let work = tempfile::tempdir().unwrap();
    assert!(gpg(
        home.path(),
        &[
            "--quick-gen-key",
            "pibake test <test@pibake.invalid>",
            "rsa2048",
            "sign",
            "never"
        ]
    ));
    let key = work.path().join("key.asc");
    assert!(gpg(
        home.path(),
        &["--armor", "--output", key.to_str().unwrap(), "--export"]
    ));

    let raw = image(1 << 20, 21);
    let z = xz(&raw);
    let img = work.path().join("base.img.xz");
    std::fs::write(&img, &z).unwrap();
    let sig = work.path().join("base.img.xz.sig");
    assert!(gpg(
        home.path(),
        &[
            "--output",
            sig.to_str().unwrap(),
            "--detach-sign",
            img.to_str().unwrap()
        ]
    ));
    let other = work.path().join("other");
    std::fs::write(&other, b"something else").unwrap();
    let other_sig = work.path().join("other.sig");
    assert!(gpg(
        home.path(),
        &[
            "--output",
            other_sig.to_str().unwrap(),
            "--detach-sign",
            other.to_str().unwrap()
        ]
    ));

    let server = Server::start();
    server.put("/base.img.xz", z.clone());
    server.put(
        "/base.img.xz.sha256",
        format!("{}  base.img.xz\n", sha(&z)).into_bytes(),
    );
    server.put("/base.img.xz.sig", std::fs::read(&sig).unwrap());
    let cache = tempfile::tempdir().unwrap();
    let mut o = options(cache.path(), String::new());
    o.signing_key = Some(key.clone());
    let a = acquire::resolve(&server.url("/base.img.xz"), &o, &Silent).unwrap();
    let check = a.verification.signature.expect("signature recorded");
    assert_eq!(check.signature_url, server.url("/base.img.xz.sig"));
    assert_eq!(check.key_fingerprint.len(), 40);
    assert_eq!(std::fs::read(&a.image).unwrap(), raw);

    // A signature over other bytes is refused, even though the download is cached.
    server.put("/base.img.xz.sig", std::fs::read(&other_sig).unwrap());
    let e = acquire::resolve(&server.url("/base.img.xz"), &o, &Silent).unwrap_err();
    assert!(matches!(e, AcquireError::Signature { .. }), "{e}");
    assert!(e.is_bad_input());

    // No signature on the server.
    server.remove("/base.img.xz.sig");
    let e = acquire::resolve(&server.url("/base.img.xz"), &o, &Silent).unwrap_err();
    assert!(matches!(e, AcquireError::Signature { .. }), "{e}");
    assert!(e.to_string().contains(".sig"), "{e}");
}
