//! The versioned `.proto` definitions of Axle's gRPC consumer API and the code generated
//! from them. It owns the wire contract only: no server or client logic lives here.
