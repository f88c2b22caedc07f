//! What every blob backend must do, run against each (files here, an S3
//! server in `tests/blobs`).

use std::{collections::HashSet, time::Duration};

use tokio::io::AsyncReadExt;

use super::{BlobStore, Swept};
use crate::error::Error;

async fn read(store: &BlobStore, digest: &str) -> Vec<u8> {
    let (mut r, size) = store.open_read(digest).await.unwrap();
    let mut bytes = Vec::new();
    r.read_to_end(&mut bytes).await.unwrap();
    assert_eq!(bytes.len() as u64, size, "the size announced is the size read");
    bytes
}

/// Runs every check against `store`, which must be empty.
pub async fn run(store: &BlobStore) {
    // Content addressing: identical bytes, one blob named by their hash.
    let a = store.put(b"hello").await.unwrap();
    let again = store.put(b"hello").await.unwrap();
    assert_eq!(a, again);
    assert_eq!(a.digest, format!("blake3:{}", blake3::hash(b"hello").to_hex()));
    assert_eq!(a.size, 5);
    assert!(store.contains(&a.digest).await.unwrap());
    assert_eq!(read(store, &a.digest).await, b"hello");

    // Empty blobs exist too.
    let empty = store.put(b"").await.unwrap();
    assert_eq!(read(store, &empty.digest).await, b"");

    // Absent: NotFound, and a bad digest is refused before any lookup.
    let absent = format!("blake3:{}", blake3::hash(b"never stored").to_hex());
    assert!(!store.contains(&absent).await.unwrap());
    assert!(matches!(store.open_read(&absent).await, Err(Error::NotFound(_))));
    assert!(matches!(store.open_read("blake3:../../etc/passwd").await, Err(Error::Invalid(_))));

    // Streamed in pieces larger than one upload part (a multipart upload on
    // object stores), read back whole and in order.
    let piece: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    let mut w = store.writer(64 << 20).await.unwrap();
    let mut hasher = blake3::Hasher::new();
    for n in 0..20u8 {
        let mut p = piece.clone();
        p[0] = n;
        hasher.update(&p);
        w.write(&p).await.unwrap();
    }
    assert_eq!(w.size(), 20 << 20);
    let big = w.finish().await.unwrap();
    assert_eq!(big.digest, format!("blake3:{}", hasher.finalize().to_hex()));
    let back = read(store, &big.digest).await;
    assert_eq!(blake3::hash(&back), hasher.finalize());

    // Ranges: one request anywhere in a blob, cut short at its end,
    // bounded, NotFound when absent.
    let range = store.read_range(&big.digest, (5 << 20) + 3..(5 << 20) + 1003).await.unwrap();
    assert_eq!(range, back[(5 << 20) + 3..(5 << 20) + 1003]);
    assert_eq!(store.read_range(&a.digest, 3..100).await.unwrap(), b"lo");
    assert_eq!(store.read_range(&a.digest, 2..2).await.unwrap(), b"");
    assert!(matches!(store.read_range(&absent, 0..1).await, Err(Error::NotFound(_))));
    assert!(matches!(store.read_range(&big.digest, 0..(65 << 20)).await, Err(Error::TooLarge(_))));

    // Whole reads are bounded.
    assert_eq!(store.read_all(&a.digest, 5).await.unwrap(), b"hello");
    assert!(matches!(store.read_all(&a.digest, 4).await, Err(Error::TooLarge(_))));

    // The limit holds while writing; an abandoned write leaves no blob.
    let mut w = store.writer(4).await.unwrap();
    w.write(b"abc").await.unwrap();
    assert!(matches!(w.write(b"de").await, Err(Error::TooLarge(_))));
    drop(w);
    let partial = format!("blake3:{}", blake3::hash(b"abc").to_hex());
    assert!(!store.contains(&partial).await.unwrap());
    let mut w = store.writer(1 << 30).await.unwrap();
    w.write(&piece).await.unwrap();
    drop(w);

    // Two writers of the same bytes at once: both succeed, one blob.
    let (x, y) = tokio::join!(store.put(b"twice"), store.put(b"twice"));
    assert_eq!(x.unwrap(), y.unwrap());

    // Sweeping: young blobs survive; old unreferenced ones go, exactly.
    let c = store.put(b"other").await.unwrap();
    let twice = format!("blake3:{}", blake3::hash(b"twice").to_hex());
    let keep: HashSet<String> = [&a.digest, &empty.digest, &big.digest, &twice].into_iter().cloned().collect();
    assert_eq!(store.sweep(&keep, Duration::from_secs(3600)).await.unwrap(), Swept::default());
    // Object stores may date objects by whole seconds.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let swept = store.sweep(&keep, Duration::from_millis(1000)).await.unwrap();
    assert_eq!(swept, Swept { files: 1, bytes: 5 }, "only `other` is unreferenced");
    assert!(!store.contains(&c.digest).await.unwrap());
    for d in &keep {
        assert!(store.contains(d).await.unwrap(), "{d} was kept");
    }
    assert_eq!(read(store, &a.digest).await, b"hello");
}
