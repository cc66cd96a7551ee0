//! Ordered channels (canary -> stable) and their soak times.

use super::*;

domain_service! {
    /// Ordered channels (canary -> stable) and their soak times.
    Channels
}

impl Channels<'_> {
    pub async fn list(self) -> Result<Vec<Channel>, Error> {
        store::channels::list(&self.db).await
    }

    pub(super) async fn channel(self, tx: &mut Tx, name: &str) -> Result<Channel, Error> {
        store::channels::get(tx, name)
            .await?
            .ok_or_else(|| Error::ChannelNotFound(name.to_owned()))
    }

    /// Appends a channel after the last one.
    pub async fn add_channel(self, by: &AuthUser, req: &ChannelRequest) -> Result<Channel, Error> {
        by.require(Role::Admin)?;
        if !valid_name(&req.name) {
            return Err(Error::BadRequest(format!(
                "channel name {:?} must be 1 to 64 characters of [a-z0-9._-]",
                req.name
            )));
        }
        let soak = secs_to_i64(req.min_soak_secs, "min_soak_secs")?;
        let now = self.now();
        let mut tx = self.db.begin_audited().await?;
        let next = store::channels::next_position(&mut tx).await?;
        store::channels::insert(&mut tx, &req.name, next, soak).await?;
        audit::append(
            &mut tx,
            now,
            &by.actor(),
            "channel.add",
            &req.name,
            json!({"position": next, "min_soak_secs": soak}),
        )
        .await?;
        tx.commit().await?;
        Ok(Channel {
            name: req.name.clone(),
            position: next as u32,
            min_soak_secs: req.min_soak_secs,
        })
    }

    /// Sets how long a release must spend in the previous channel before entering this one.
    pub async fn set_channel_soak(
        self,
        by: &AuthUser,
        name: &str,
        secs: u64,
    ) -> Result<Channel, Error> {
        by.require(Role::Admin)?;
        let soak = secs_to_i64(secs, "min_soak_secs")?;
        let now = self.now();
        let mut tx = self.db.begin_audited().await?;
        let mut channel = self.channel(&mut tx, name).await?;
        store::channels::set_soak(&mut tx, name, soak).await?;
        audit::append(
            &mut tx,
            now,
            &by.actor(),
            "channel.set_soak",
            name,
            json!({"min_soak_secs": soak}),
        )
        .await?;
        tx.commit().await?;
        channel.min_soak_secs = secs;
        Ok(channel)
    }
}
