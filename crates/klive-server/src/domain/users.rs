//! Admin users, their roles and API tokens.

use super::*;

domain_service! {
    /// Admin users, their roles and API tokens.
    Users
}

impl Users<'_> {
    /// Adds a user. `by` is `None` only for the local operator bootstrapping the first admin
    /// through the CLI (recorded as `system`).
    pub async fn add_user(
        self,
        by: Option<&AuthUser>,
        name: &str,
        role: Role,
    ) -> Result<User, Error> {
        if let Some(u) = by {
            u.require(Role::Admin)?;
        }
        if !valid_name(name) {
            return Err(Error::BadUserName(name.to_owned()));
        }
        let now = self.now();
        let mut tx = self.db.begin_audited().await?;
        store::users::insert(&mut tx, name, role, now).await?;
        let actor = by.map_or(Actor::System, AuthUser::actor);
        audit::append(
            &mut tx,
            now,
            &actor,
            "user.add",
            name,
            json!({"role": role.as_str()}),
        )
        .await?;
        tx.commit().await?;
        Ok(User {
            name: name.to_owned(),
            role,
            created_at: rfc3339(now),
        })
    }

    pub async fn list(self, by: &AuthUser) -> Result<Vec<User>, Error> {
        by.require(Role::Admin)?;
        store::users::list(&self.db).await
    }

    /// Creates an API token for `user`; only its hash is kept.
    pub async fn create_token(
        self,
        by: Option<&AuthUser>,
        user: &str,
    ) -> Result<TokenCreated, Error> {
        if let Some(u) = by {
            u.require(Role::Admin)?;
        }
        self.user_by_name(user).await?;
        let token = new_secret(USER_TOKEN_PREFIX)?;
        let now = self.now();
        let mut tx = self.db.begin_audited().await?;
        store::users::insert_token(&mut tx, &sha256_hex(token.as_bytes()), user, now).await?;
        let actor = by.map_or(Actor::System, AuthUser::actor);
        audit::append(&mut tx, now, &actor, "token.create", user, json!({})).await?;
        tx.commit().await?;
        Ok(TokenCreated {
            user: user.to_owned(),
            token,
        })
    }

    /// Revokes every API token of `user`; returns how many were active.
    pub async fn revoke_tokens(self, by: Option<&AuthUser>, user: &str) -> Result<u64, Error> {
        if let Some(u) = by {
            u.require(Role::Admin)?;
        }
        self.user_by_name(user).await?;
        let now = self.now();
        let mut tx = self.db.begin_audited().await?;
        let n = store::users::revoke_tokens(&mut tx, user, now).await?;
        let actor = by.map_or(Actor::System, AuthUser::actor);
        audit::append(
            &mut tx,
            now,
            &actor,
            "token.revoke",
            user,
            json!({"revoked": n}),
        )
        .await?;
        tx.commit().await?;
        Ok(n)
    }

    pub async fn user_by_name(self, name: &str) -> Result<AuthUser, Error> {
        store::users::by_name(&self.db, name)
            .await?
            .map(AuthUser::from)
            .ok_or_else(|| Error::UserNotFound(name.to_owned()))
    }

    /// The user holding this API token. A failure is audited (at most once a minute per
    /// kind of token, see [`crate::domain::auth_failures`]).
    pub async fn authenticate_user(self, token: &str) -> Result<AuthUser, Error> {
        if !token.starts_with(USER_TOKEN_PREFIX) {
            self.audit_failed_auth("malformed token").await;
            return Err(Error::Unauthenticated);
        }
        let user = store::users::by_token(&self.db, &sha256_hex(token.as_bytes())).await?;
        let Some(user) = user else {
            self.audit_failed_auth("api token").await;
            return Err(Error::Unauthenticated);
        };
        Ok(user.into())
    }

    pub(super) async fn audit_failed_auth(self, kind: &'static str) {
        let now = self.now();
        let Some(failures) = self.failed_auth.note(kind, now) else {
            return;
        };
        let record = async {
            let mut tx = self.db.begin_audited().await?;
            audit::append(
                &mut tx,
                now,
                &Actor::System,
                "auth.failed",
                kind,
                json!({"failures": failures, "window_secs": crate::domain::auth_failures::WINDOW_MS / 1000}),
            )
            .await?;
            tx.commit().await?;
            Ok::<_, Error>(())
        };
        if let Err(e) = record.await {
            // The caller is refused either way; the failure stays in the server's log.
            tracing::warn!(kind, failures, "recording a failed sign-in failed: {e}");
        }
    }
}
