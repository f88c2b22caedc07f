// A real OpenID Provider for the single sign-on tests: the npm package
// `oidc-provider` (a certified implementation), installed by
// `cargo xtask setup` into target/tools/oidc-provider.
//
// node provider.mjs MODULE_DIR PORT REDIRECT_URI CLIENT_SECRET_FILE ACCOUNTS_JSON
//
// Any login with any password signs in (devInteractions); ACCOUNTS_JSON
// maps logins to {name, groups}. Consent is implied for the one client, so
// a sign-in is: the login form, then straight back to the redirect URI.
// Prints "listening ISSUER" when ready.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const [moduleDir, port, redirect, secretFile, accountsJson] = process.argv.slice(2);
const entry = join(moduleDir, 'node_modules', 'oidc-provider', 'lib', 'index.js');
const { default: Provider } = await import(pathToFileURL(entry).href);
const accounts = JSON.parse(accountsJson);
const issuer = `http://127.0.0.1:${port}`;
const clientId = 'viaduct';

const provider = new Provider(issuer, {
  clients: [{
    client_id: clientId,
    client_secret: readFileSync(secretFile, 'utf8').trim(),
    redirect_uris: [redirect],
    grant_types: ['authorization_code'],
    response_types: ['code'],
  }],
  claims: {
    openid: ['sub'],
    profile: ['name', 'preferred_username'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
  },
  // Put the scopes' claims in the ID token itself (what Viaduct reads).
  conformIdTokenClaims: false,
  features: { devInteractions: { enabled: true } },
  pkce: { required: () => true },
  cookies: { keys: ['viaduct-test-provider-cookies'] },
  async findAccount(ctx, sub) {
    const known = accounts[sub] ?? {};
    return {
      accountId: sub,
      async claims() {
        return {
          sub,
          preferred_username: sub,
          name: known.name ?? sub,
          email: `${sub}@example.test`,
          email_verified: true,
          groups: known.groups ?? [],
        };
      },
    };
  },
  async loadExistingGrant(ctx) {
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope('openid profile email groups');
    grant.addOIDCClaims(['preferred_username', 'name', 'email', 'groups']);
    await grant.save();
    return grant;
  },
});

const server = provider.listen(Number(port), '127.0.0.1', () => {
  console.log(`listening ${issuer}`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
