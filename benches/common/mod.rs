//! Helpers shared by the benches.

/// Creates a member account and an API key for it with the server's own services;
/// returns the account id and the key's token.
pub async fn member_with_key(services: &easel::app::Services) -> (String, String) {
    let account = services
        .accounts
        .create(
            easel::accounts::NewAccount {
                email: "bench@example.com".into(),
                name: "Bench".into(),
                company: None,
                password: easel::crypto::Secret::new("bench password long".into()),
                role: easel::auth::Role::Member,
                adult: true,
                must_change_password: false,
            },
            easel::accounts::Actor::Cli,
        )
        .await
        .expect("account");
    let (_, key) = services
        .keys
        .create(
            &account.id,
            easel::auth::Role::Member,
            easel::keys::NewKey {
                name: "bench".into(),
                ..Default::default()
            },
            None,
        )
        .await
        .expect("key");
    (account.id, key.expose().clone())
}
