"""The Open Inference Protocol v2 (KServe, Triton, MLServer) beside the JSON API: `codec` turns tensors into
rows and answers into tensors, `handler` is the protocol's operations on the core (`DataPlane`), `rest` and
`server` translate HTTP and gRPC to it."""
