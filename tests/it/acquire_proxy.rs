//! Proxy environment variables are honoured. The "proxy" is the local test server, so the
//! request for a host that does not exist never leaves 127.0.0.1.

use crate::common_http;

use common_http::{Server, image, options, sha, xz};
use pibake::acquire;
use pibake::progress::Silent;

/// The proxy variables are process-wide, and the integration tests share one process: the
/// check runs in a child process of this test binary, alone.
#[test]
fn http_proxy_from_the_environment_is_used() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "acquire_proxy::proxy_check_in_its_own_process",
            "--ignored",
            "--test-threads=1",
        ])
        .env("PIBAKE_TEST_ALONE", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "run by http_proxy_from_the_environment_is_used in a process of its own"]
fn proxy_check_in_its_own_process() {
    assert_eq!(
        std::env::var("PIBAKE_TEST_ALONE").as_deref(),
        Ok("1"),
        "changes the process environment: run only through http_proxy_from_the_environment_is_used"
    );
    let proxy = Server::start();
    let raw = image(1 << 20, 11);
    let z = xz(&raw);
    proxy.put("/base.img.xz", z.clone());
    // SAFETY: this runs only in a child process that runs this one test (checked above), so no
    // other thread reads or writes the environment.
    unsafe {
        for k in [
            "NO_PROXY",
            "no_proxy",
            "ALL_PROXY",
            "all_proxy",
            "HTTPS_PROXY",
            "https_proxy",
        ] {
            std::env::remove_var(k);
        }
        std::env::set_var("HTTP_PROXY", format!("http://{}", proxy.addr()));
        std::env::set_var("http_proxy", format!("http://{}", proxy.addr()));
    }
    let cache = tempfile::tempdir().unwrap();
    let mut o = options(cache.path(), String::new());
    o.use_env_proxy = true;
    o.sha256 = Some(sha(&z));
    let a = acquire::resolve("http://pibake-test.invalid/base.img.xz", &o, &Silent).unwrap();
    assert_eq!(std::fs::read(&a.image).unwrap(), raw);
    let log = proxy.gets("/base.img.xz");
    assert_eq!(log.len(), 1);
    assert!(
        log[0].absolute,
        "the request must have gone through the proxy"
    );
}
