//! The budget of connections that have not joined yet.
//!
//! A socket holds no player slot until its Join token checks out, so sockets that
//! upgrade and never join cannot lock players out. They take a place in this smaller
//! budget instead, for at most the join timeout: `capacity` places in all and
//! `per_address` for one source address, so one host cannot take them all either. A
//! connection that finds no place is refused before the WebSocket upgrade (503).

use std::net::IpAddr;
use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct Unjoined {
    capacity: usize,
    places: Arc<Semaphore>,
    per_address: u32,
    by_address: Arc<DashMap<IpAddr, u32>>,
}

/// Why a connection found no place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{0} connections are waiting to join this server; try again shortly")]
    Full(usize),
    #[error("{0} connections from your address are waiting to join; try again shortly")]
    Address(u32),
}

/// A place in the budget, given back when dropped (at the join, or the connection's end).
pub struct Place {
    _permit: OwnedSemaphorePermit,
    address: IpAddr,
    by_address: Arc<DashMap<IpAddr, u32>>,
}

impl Unjoined {
    pub fn new(capacity: usize, per_address: u32) -> Self {
        Self { capacity, places: Arc::new(Semaphore::new(capacity)), per_address, by_address: Arc::default() }
    }

    pub fn admit(&self, address: IpAddr) -> Result<Place, Refused> {
        let permit = Arc::clone(&self.places).try_acquire_owned().map_err(|_| Refused::Full(self.capacity))?;
        let mut count = self.by_address.entry(address).or_insert(0);
        if *count >= self.per_address {
            return Err(Refused::Address(self.per_address));
        }
        *count += 1;
        drop(count);
        Ok(Place { _permit: permit, address, by_address: Arc::clone(&self.by_address) })
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.by_address.remove_if_mut(&self.address, |_, count| {
            *count -= 1;
            *count == 0
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn one_address_cannot_take_every_place_and_places_come_back() {
        let u = Unjoined::new(3, 2);
        let a1 = u.admit(A).unwrap();
        let _a2 = u.admit(A).unwrap();
        assert_eq!(u.admit(A).err(), Some(Refused::Address(2)));
        let _b1 = u.admit(B).unwrap();
        assert_eq!(u.admit(B).err(), Some(Refused::Full(3)));
        drop(a1);
        assert!(u.admit(A).is_ok(), "a place given back is free again");
        drop(_a2);
        drop(_b1);
        assert!(u.by_address.is_empty(), "addresses without connections are forgotten");
    }
}
