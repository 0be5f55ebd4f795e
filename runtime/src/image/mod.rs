//! OCI images: content store, import, pull, unpacking and snapshots.
