//! One call, [`authenticate`]: is this user's password right, by the system's PAM stack for a
//! service (Salt's `pam` eauth: service `login` by default, `auth.pam.service`)? The
//! conversation answers PAM's hidden prompt with the password, as Salt's backend does, and the
//! account check (`pam_acct_mgmt`: expired or locked accounts) must pass too.
//!
//! This is the only crate of brine with `unsafe` code: libpam's C interface. Each block says
//! what it relies on.

#![allow(unsafe_code)]
#![warn(missing_docs)]

use std::ffi::{CString, c_char, c_int, c_void};

const PAM_SUCCESS: c_int = 0;
const PAM_BUF_ERR: c_int = 5;
const PAM_CONV_ERR: c_int = 19;
const PAM_PROMPT_ECHO_OFF: c_int = 1;
/// An account with an empty password never logs in (Debian's `pam_unix` has `nullok`).
const PAM_DISALLOW_NULL_AUTHTOK: c_int = 0x1;

#[repr(C)]
struct PamMessage {
    msg_style: c_int,
    msg: *const c_char,
}

#[repr(C)]
struct PamResponse {
    resp: *mut c_char,
    resp_retcode: c_int,
}

type ConvFn =
    extern "C" fn(c_int, *mut *const PamMessage, *mut *mut PamResponse, *mut c_void) -> c_int;

#[repr(C)]
struct PamConv {
    conv: Option<ConvFn>,
    appdata_ptr: *mut c_void,
}

unsafe extern "C" {
    fn pam_start(
        service: *const c_char,
        user: *const c_char,
        conv: *const PamConv,
        pamh: *mut *mut c_void,
    ) -> c_int;
    fn pam_authenticate(pamh: *mut c_void, flags: c_int) -> c_int;
    fn pam_acct_mgmt(pamh: *mut c_void, flags: c_int) -> c_int;
    fn pam_end(pamh: *mut c_void, status: c_int) -> c_int;
}

/// The conversation: PAM's hidden prompts get the password (`appdata_ptr`, a NUL-terminated
/// string that outlives the PAM handle); other messages get no answer.
extern "C" fn converse(
    num_msg: c_int,
    msg: *mut *const PamMessage,
    resp: *mut *mut PamResponse,
    appdata: *mut c_void,
) -> c_int {
    let Ok(n) = usize::try_from(num_msg) else {
        return PAM_CONV_ERR;
    };
    if n == 0 || n > 64 || msg.is_null() || resp.is_null() || appdata.is_null() {
        return PAM_CONV_ERR;
    }
    // SAFETY: PAM frees the responses with free(3), so they come from calloc; zeroed memory is
    // a valid array of `n` empty responses.
    let out = unsafe { libc::calloc(n, size_of::<PamResponse>()) }.cast::<PamResponse>();
    if out.is_null() {
        return PAM_BUF_ERR;
    }
    for i in 0..n {
        // SAFETY: Linux-PAM passes `msg` as an array of `num_msg` pointers to messages.
        let m = unsafe { *msg.add(i) };
        if m.is_null() {
            continue;
        }
        // SAFETY: `m` points to a message PAM owns for the duration of this call.
        let style = unsafe { (*m).msg_style };
        if style == PAM_PROMPT_ECHO_OFF {
            // SAFETY: `appdata` is the password's CString (see `authenticate`); strdup copies
            // it into memory PAM will free.
            let copy = unsafe { libc::strdup(appdata.cast::<c_char>()) };
            if copy.is_null() {
                // SAFETY: the responses so far were strdup'ed; free them and the array.
                unsafe { free_responses(out, n) };
                return PAM_BUF_ERR;
            }
            // SAFETY: `i < n`, inside the array calloc returned.
            unsafe { (*out.add(i)).resp = copy };
        }
    }
    // SAFETY: `resp` is PAM's out-pointer for the response array.
    unsafe { *resp = out };
    PAM_SUCCESS
}

/// Free a response array built by `converse`.
///
/// # Safety
/// `out` is a calloc'ed array of `n` responses whose `resp` fields are null or strdup'ed.
unsafe fn free_responses(out: *mut PamResponse, n: usize) {
    for i in 0..n {
        // SAFETY: as the function's contract says.
        unsafe {
            let r = (*out.add(i)).resp;
            if !r.is_null() {
                libc::free(r.cast());
            }
        }
    }
    // SAFETY: calloc'ed by `converse`.
    unsafe { libc::free(out.cast()) };
}

/// Whether `password` is `user`'s, by PAM service `service` (authentication, then the account
/// check). Blocks: PAM modules sleep on failures (`pam_faildelay`), so call it off the async
/// threads. A name or password with a NUL byte, or an empty one, is refused without asking.
pub fn authenticate(service: &str, user: &str, password: &str) -> bool {
    if user.is_empty() || password.is_empty() {
        return false;
    }
    let (Ok(service), Ok(user), Ok(password)) = (
        CString::new(service),
        CString::new(user),
        CString::new(password),
    ) else {
        return false;
    };
    let conv = PamConv {
        conv: Some(converse),
        appdata_ptr: password.as_ptr().cast_mut().cast(),
    };
    let mut handle: *mut c_void = std::ptr::null_mut();
    // SAFETY: the strings and `conv` live until `pam_end` below; `handle` is an out-pointer.
    let started = unsafe { pam_start(service.as_ptr(), user.as_ptr(), &conv, &mut handle) };
    if started != PAM_SUCCESS || handle.is_null() {
        return false;
    }
    // SAFETY: `handle` is the live handle pam_start gave.
    let mut rc = unsafe { pam_authenticate(handle, PAM_DISALLOW_NULL_AUTHTOK) };
    if rc == PAM_SUCCESS {
        // SAFETY: as above.
        rc = unsafe { pam_acct_mgmt(handle, PAM_DISALLOW_NULL_AUTHTOK) };
    }
    // SAFETY: ends the handle exactly once; nothing uses it afterwards.
    unsafe { pam_end(handle, rc) };
    drop(password);
    rc == PAM_SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_without_asking_what_pam_cannot_be_given() {
        assert!(!authenticate("login", "", "x"));
        assert!(!authenticate("login", "root", ""));
        assert!(!authenticate("login", "ro\0ot", "x"));
        assert!(!authenticate("login", "root", "pass\0word"));
        // No such user: PAM says no (and brine does not crash in the conversation).
        assert!(!authenticate("other", "brine-no-such-user-xyz", "whatever"));
    }
}
