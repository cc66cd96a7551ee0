//! What makes the server's answers trustworthy: TUF metadata per channel, the HTTPS
//! certificates, and the random secrets behind tokens and credentials.

pub mod secrets;
pub mod tls;
pub mod tuf;
