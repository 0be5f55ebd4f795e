//! One module per subcommand: each parses its arguments, calls the client, prints.

pub mod completion;
pub mod exec;
pub mod health;
pub mod images;
pub mod inspect;
pub mod logs;
pub mod net;
pub mod pods;
pub mod ps;
pub mod version;
