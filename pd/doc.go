// Package pd holds the building blocks of prefill/decode disaggregation with vLLM's
// NixlConnector, as vLLM's toy proxy and vllm-router implement it:
//
//  1. PrefillBody rewrites the client's body for the prefill worker (one token, no
//     stream, kv_transfer_params asking for a remote decode);
//  2. Prefill sends it (PrepareLeg builds the request) and returns the response;
//  3. KVTransferParams takes the worker's kv_transfer_params from that response;
//  4. DecodeBody puts them into the client's body for the decode worker, whose response
//     the router streams to the client;
//  5. MergeGenerate stitches a non-streaming /inference/v1/generate answer together
//     when the client wants routed experts ("router replay") or prompt logprobs.
//
// Bodies can be hundreds of megabytes, so they are never decoded: a small validating
// scanner (ScanObject, Lookup, EditObject) finds the few members that change and copies
// every other byte through. Functions append to a caller's dst so the router can pool
// buffers; the rewrites allocate nothing when dst has room. The package does no
// logging and keeps no state.
package pd
