-- tracewatch ledger: a call's keys and arguments arrive as one MessagePack array of two
-- arrays (KEYS, ARGV) in ARGV[1], since hiredis packs one long argument far faster than
-- tens of thousands of short ones; the script below reads them as usual.
local KEYS, ARGV = unpack(cmsgpack.unpack(ARGV[1]))
