//! Proxy environment variables are honoured. The "proxy" is the local test server, so the
//! request for a host that does not exist never leaves 127.0.0.1.

mod common_http;

use common_http::{Server, image, options, sha, xz};
use pibake::acquire;
use pibake::progress::Silent;

#[test]
fn http_proxy_from_the_environment_is_used() {
    let proxy = Server::start();
    let raw = image(1 << 20, 11);
    let z = xz(&raw);
    proxy.put("/base.img.xz", z.clone());
    // SAFETY: this test binary has a single test, so no other thread reads the environment.
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
