//! A test PKI made with openssl in a fresh directory, removed when dropped:
//! a CA, a server certificate for localhost signed by it, a client
//! certificate signed by it, a server certificate for another host signed by
//! it, a self-signed server certificate, and an unrelated CA.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `cmd`, panicking with its stderr if it fails.
pub fn run(cmd: &mut Command) {
    let out = cmd.output().expect("command runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn openssl(dir: &Path, args: &[&str]) {
    run(Command::new("openssl").current_dir(dir).args(args));
}

/// Files: `ca.pem`, `other-ca.pem`, `server.{pem,key}` (localhost and
/// 127.0.0.1), `client.{pem,key}` (client auth), `elsewhere.{pem,key}` (a
/// server certificate for `elsewhere.invalid` only, signed by the CA) and
/// `self.{pem,key}` (self-signed, localhost).
pub struct Pki {
    dir: PathBuf,
}

const DAYS: [&str; 2] = ["-days", "2"];

impl Pki {
    pub fn new() -> Self {
        let dir =
            std::env::temp_dir().join(format!("eventbus-tls-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        for ca in ["ca", "other-ca"] {
            openssl(
                &dir,
                &[
                    &[
                        "req",
                        "-x509",
                        "-newkey",
                        "rsa:2048",
                        "-nodes",
                        "-keyout",
                        &format!("{ca}.key"),
                    ][..],
                    &[
                        "-out",
                        &format!("{ca}.pem"),
                        "-subj",
                        &format!("/CN=eventbus test {ca}"),
                    ],
                    &DAYS[..],
                ]
                .concat(),
            );
        }
        openssl(
            &dir,
            &[
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-keyout",
                    "self.key",
                    "-out",
                    "self.pem",
                    "-subj",
                    "/CN=localhost",
                    "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1",
                ][..],
                &DAYS[..],
            ]
            .concat(),
        );
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .expect("ext");
        std::fs::write(
            dir.join("elsewhere.ext"),
            "subjectAltName=DNS:elsewhere.invalid\n",
        )
        .expect("ext");
        std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("ext");
        for (name, cn) in [
            ("server", "localhost"),
            ("client", "eventbus-client"),
            ("elsewhere", "elsewhere.invalid"),
        ] {
            openssl(
                &dir,
                &[
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-out",
                    &format!("{name}.key"),
                ],
            );
            openssl(
                &dir,
                &[
                    "req",
                    "-new",
                    "-key",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                    "-subj",
                    &format!("/CN={cn}"),
                ],
            );
            openssl(
                &dir,
                &[
                    &[
                        "x509",
                        "-req",
                        "-in",
                        &format!("{name}.csr"),
                        "-CA",
                        "ca.pem",
                        "-CAkey",
                        "ca.key",
                        "-CAcreateserial",
                    ][..],
                    &[
                        "-out",
                        &format!("{name}.pem"),
                        "-extfile",
                        &format!("{name}.ext"),
                    ],
                    &DAYS[..],
                ]
                .concat(),
            );
        }
        // A broker running as its own user must read the files.
        run(Command::new("chmod").args(["-R", "a+rX"]).arg(&dir));
        Self { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
