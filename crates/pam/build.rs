//! Link the system's libpam by its runtime name (`libpam.so.0`), so building needs no
//! `libpam0g-dev`: Debian ships the library with every install.
fn main() {
    println!("cargo:rustc-link-lib=dylib:+verbatim=libpam.so.0");
}
