// brine's compile-time settings for libzmq, forced into each of its translation units
// (`-include`, see .cargo/config.toml; zmq-sys builds libzmq from source and has no switch for
// these). libzmq takes them from an enum in its src/config.hpp; that header is included here
// first with the one constant renamed, and the constant is declared again with brine's value.
// Any later `#include "config.hpp"` is a no-op (its include guard).
//
// message_pipe_granularity: messages per allocation chunk of a pipe's queue. libzmq's 256 makes
// each chunk 256 x 64-byte messages = 16 KiB; a master holds two connections per minion, each
// with a pipe pair, so 4 chunks = 64 KiB of heap per connected minion, most of it never used
// (a minion's connection carries a few messages a minute). 16 makes a chunk 1 KiB; a queue
// keeps one spare chunk, so a busy pipe still allocates rarely. See docs/performance.md.
#ifndef BRINE_ZMQ_CONFIG_HPP
#define BRINE_ZMQ_CONFIG_HPP

// Other C++ cargo compiles (libFuzzer, for crates/proto/fuzz) gets this header too: only a
// translation unit that can see libzmq's config.hpp is changed.
#if __has_include("config.hpp")

#define message_pipe_granularity libzmq_message_pipe_granularity
#include "config.hpp"
#undef message_pipe_granularity

namespace zmq
{
enum
{
    message_pipe_granularity = 16
};
}

#endif // __has_include("config.hpp")

#endif
