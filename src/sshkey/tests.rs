//! Judged by OpenSSH's own `ssh-keygen` where it can be, not only by reading our output back.

use super::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Run ssh-keygen, failing loudly (not skipping) when it is not installed.
fn ssh_keygen(args: &[&str], stdin: Option<&Path>) -> Output {
    let mut cmd = Command::new("ssh-keygen");
    cmd.args(args);
    if let Some(p) = stdin {
        cmd.stdin(std::fs::File::open(p).expect("stdin file"));
    } else {
        cmd.stdin(Stdio::null());
    }
    match cmd.output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("ssh-keygen is not installed: install openssh-client to run these tests")
        }
        Err(e) => panic!("cannot run ssh-keygen: {e}"),
    }
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Write a private key file as ssh-keygen insists: readable by its owner only.
fn write_private(path: &Path, text: &str) {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path).expect("create key file");
    std::io::Write::write_all(&mut f, text.as_bytes()).expect("write key file");
}

/// A key made by ssh-keygen itself, with extra arguments (type, passphrase).
fn keygen_file(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let f = dir.join(name);
    let f_str = f.to_str().expect("utf-8 temp path");
    let mut all = vec!["-q", "-C", "test", "-f", f_str];
    all.extend_from_slice(args);
    ok(&ssh_keygen(&all, None), "ssh-keygen key generation");
    f
}

fn type_and_blob(line: &str) -> String {
    line.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

fn seed(hex_seed: &str) -> [u8; 32] {
    hex::decode(hex_seed)
        .expect("hex")
        .try_into()
        .expect("32 bytes")
}

const RFC8032_TEST1_SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
const RFC8032_TEST1_PUBLIC: &str =
    "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

#[test]
fn rfc8032_test_1_seed_gives_its_public_key() {
    let k = KeyPair::from_seed(seed(RFC8032_TEST1_SEED), "");
    assert_eq!(hex::encode(k.public_key()), RFC8032_TEST1_PUBLIC);
    // No trailing space without a comment.
    assert!(
        k.public_line()
            .starts_with("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI")
    );
    assert_eq!(k.public_line().split(' ').count(), 2, "{}", k.public_line());
}

#[test]
fn private_openssh_is_deterministic_and_well_formed() {
    let a = KeyPair::from_seed([7; 32], "node01");
    let b = KeyPair::from_seed([7; 32], "node01");
    let c = KeyPair::from_seed([8; 32], "node01");
    assert_eq!(a.private_openssh(), b.private_openssh());
    assert_ne!(a.private_openssh(), c.private_openssh());
    let text = a.private_openssh();
    assert!(text.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----\n"));
    assert!(text.ends_with("\n-----END OPENSSH PRIVATE KEY-----\n"));
    let body: Vec<&str> = text.lines().skip(1).collect();
    let body = &body[..body.len() - 1];
    assert!(body.iter().all(|l| l.len() <= 70));
    assert!(body[..body.len() - 1].iter().all(|l| l.len() == 70));
    assert_eq!(KeyPair::parse_private(&text).expect("parses back"), a);
}

#[test]
fn generated_keys_differ_and_debug_hides_the_seed() {
    let a = KeyPair::generate("a").expect("OS randomness");
    let b = KeyPair::generate("a").expect("OS randomness");
    assert_ne!(a.public_key(), b.public_key());
    let shown = format!("{a:?}");
    assert!(shown.contains(&a.fingerprint()), "{shown}");
    assert!(!shown.contains("seed"), "{shown}");
    let k = KeyPair::from_seed([0xab; 32], "c");
    assert!(!format!("{k:?}").to_lowercase().contains("abab"));
}

#[test]
fn control_characters_in_a_comment_stay_on_one_line() {
    let k = KeyPair::from_seed([1; 32], "evil\nssh-ed25519 AAAA attacker");
    assert!(!k.public_line().contains('\n'));
    assert_eq!(k.comment(), "evil\nssh-ed25519 AAAA attacker");
}

#[test]
fn ssh_keygen_agrees_on_fingerprint_and_public_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = KeyPair::generate("pibake@test").expect("OS randomness");
    let f = dir.path().join("id");
    write_private(&f, &key.private_openssh());
    let f = f.to_str().expect("utf-8");

    let listed = ok(&ssh_keygen(&["-l", "-f", f], None), "ssh-keygen -l");
    // "256 SHA256:... comment (ED25519)"
    assert_eq!(
        listed.split_whitespace().nth(1),
        Some(key.fingerprint().as_str()),
        "{listed}"
    );
    assert!(listed.contains("(ED25519)"), "{listed}");

    let public = ok(&ssh_keygen(&["-y", "-f", f], None), "ssh-keygen -y");
    assert_eq!(type_and_blob(&public), type_and_blob(&key.public_line()));
    assert_eq!(public.trim(), key.public_line(), "comment read back too");
}

#[test]
fn ssh_keygen_signs_with_our_private_key_and_our_public_key_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = KeyPair::generate("signer").expect("OS randomness");
    let f = dir.path().join("id");
    write_private(&f, &key.private_openssh());
    let data = dir.path().join("data");
    std::fs::write(&data, b"trust without prompts\n").expect("write data");
    let sig = dir.path().join("data.sig");
    let signers = dir.path().join("allowed_signers");
    std::fs::write(
        &signers,
        format!("node@cluster namespaces=\"file\" {}\n", key.public_line()),
    )
    .expect("write allowed_signers");
    let s = |p: &Path| p.to_str().expect("utf-8").to_string();

    ok(
        &ssh_keygen(&["-Y", "sign", "-f", &s(&f), "-n", "file", &s(&data)], None),
        "ssh-keygen -Y sign",
    );
    ok(
        &ssh_keygen(
            &["-Y", "check-novalidate", "-n", "file", "-s", &s(&sig)],
            Some(&data),
        ),
        "ssh-keygen -Y check-novalidate",
    );
    ok(
        &ssh_keygen(
            &[
                "-Y",
                "verify",
                "-f",
                &s(&signers),
                "-I",
                "node@cluster",
                "-n",
                "file",
                "-s",
                &s(&sig),
            ],
            Some(&data),
        ),
        "ssh-keygen -Y verify against our public line",
    );

    // The check can fail: another key's public line does not verify the signature.
    let other = KeyPair::generate("other").expect("OS randomness");
    std::fs::write(
        &signers,
        format!("node@cluster namespaces=\"file\" {}\n", other.public_line()),
    )
    .expect("write allowed_signers");
    let out = ssh_keygen(
        &[
            "-Y",
            "verify",
            "-f",
            &s(&signers),
            "-I",
            "node@cluster",
            "-n",
            "file",
            "-s",
            &s(&sig),
        ],
        Some(&data),
    );
    assert!(!out.status.success(), "another key must not verify");
}

#[test]
fn reads_a_key_ssh_keygen_made_and_ssh_keygen_reads_ours_of_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = keygen_file(dir.path(), "made", &["-t", "ed25519", "-N", ""]);
    let text = std::fs::read_to_string(&f).expect("read key");
    let key = KeyPair::parse_private(&text).expect("parse ssh-keygen's key");
    assert_eq!(key.comment(), "test");
    let pub_line = std::fs::read_to_string(f.with_extension("pub")).expect("read .pub");
    assert_eq!(key.public_line(), pub_line.trim());

    let again = dir.path().join("ours");
    write_private(&again, &key.private_openssh());
    let public = ok(
        &ssh_keygen(&["-y", "-f", again.to_str().expect("utf-8")], None),
        "ssh-keygen -y on our rewrite",
    );
    assert_eq!(type_and_blob(&public), type_and_blob(pub_line.trim()));
}

#[test]
fn refusals_are_distinct_and_do_not_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let read = |p: PathBuf| std::fs::read_to_string(p).expect("read key");

    let encrypted = read(keygen_file(
        dir.path(),
        "enc",
        &["-t", "ed25519", "-N", "secret"],
    ));
    let e = KeyPair::parse_private(&encrypted).expect_err("encrypted");
    assert!(matches!(e, KeyError::Encrypted { .. }), "{e:?}");
    assert!(e.hint().is_some());

    let rsa = read(keygen_file(
        dir.path(),
        "rsa",
        &["-t", "rsa", "-b", "1024", "-N", ""],
    ));
    let e = KeyPair::parse_private(&rsa).expect_err("rsa");
    assert!(
        matches!(&e, KeyError::KeyType(t) if t == "ssh-rsa"),
        "{e:?}"
    );

    let good = KeyPair::from_seed([3; 32], "x").private_openssh();
    let lines: Vec<&str> = good.lines().collect();
    // Two whole lines of base64 decode cleanly but end inside the key.
    let truncated = format!("{}\n{}\n{}\n{}\n", lines[0], lines[1], lines[2], END);
    let e = KeyPair::parse_private(&truncated).expect_err("truncated");
    assert!(matches!(e, KeyError::Truncated(_)), "{e:?}");

    let chopped = format!("{}\n{}\n{}\n", lines[0], &lines[1][..13], END);
    let e = KeyPair::parse_private(&chopped).expect_err("chopped mid-quantum");
    assert!(matches!(e, KeyError::Base64(_)), "{e:?}");

    let e = KeyPair::parse_private(&flip_check_int(&good)).expect_err("flipped");
    assert!(matches!(e, KeyError::CheckMismatch), "{e:?}");

    let e = KeyPair::parse_private("hello, world").expect_err("garbage");
    assert!(matches!(e, KeyError::NotArmored), "{e:?}");
    let e = KeyPair::parse_private(&format!("{BEGIN}\naGVsbG8gd29ybGQ=\n{END}\n"))
        .expect_err("armoured garbage");
    assert!(matches!(e, KeyError::BadMagic), "{e:?}");

    let e = KeyPair::parse_private(&rewrite(&good, |b| {
        let n = b.len();
        b[n - 1] ^= 0xff;
    }))
    .expect_err("bad padding");
    assert!(matches!(e, KeyError::BadPadding), "{e:?}");

    // The public half after the seed in the private key field: the last 32 bytes before the
    // comment ("x", 4 + 1 bytes) and the padding.
    let e = KeyPair::parse_private(&rewrite(&good, |b| {
        let pad = usize::from(b[b.len() - 1]);
        let at = b.len() - pad - 5 - 1;
        b[at] ^= 1;
    }))
    .expect_err("public mismatch");
    assert!(matches!(e, KeyError::PublicMismatch(_)), "{e:?}");
}

#[test]
fn no_damaged_key_makes_the_parser_panic() {
    let good = KeyPair::from_seed([5; 32], "fuzz").private_openssh();
    let body = decode(&good);
    for cut in 0..body.len() {
        let _ = KeyPair::parse_private(&encode(&body[..cut]));
    }
    for at in 0..body.len() {
        for bit in [0x01, 0x80, 0xff] {
            let mut b = body.clone();
            b[at] ^= bit;
            let _ = KeyPair::parse_private(&encode(&b));
        }
    }
}

fn decode(text: &str) -> Vec<u8> {
    let b64: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD.decode(b64).expect("our own base64")
}

fn encode(body: &[u8]) -> String {
    format!("{BEGIN}\n{}\n{END}\n", STANDARD.encode(body))
}

/// Re-encode the key after changing the bytes of its private section.
fn rewrite(text: &str, change: impl Fn(&mut [u8])) -> String {
    let mut body = decode(text);
    // The private section is the last string of the body; its length is 4 bytes before it.
    let n = body.len();
    let mut section_len = 0usize;
    for len in (8..n).step_by(8) {
        let at = n - len - 4;
        if u32::from_be_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]]) as usize == len
        {
            section_len = len;
            break;
        }
    }
    assert!(section_len > 0, "found the private section");
    change(&mut body[n - section_len..]);
    encode(&body)
}

fn flip_check_int(text: &str) -> String {
    rewrite(text, |s| s[0] ^= 0x5a)
}
