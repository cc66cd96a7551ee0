// Drives the klive dashboard in a real headless Chromium (playwright-core, Debian's chromium):
// sign in as a viewer and as an approver, navigate every page, filter hosts, download the
// evidence pack, check CSRF refusal, and save screenshots. Run by tests/it/browser.rs.
import { createRequire } from 'node:module';
import { writeFileSync } from 'node:fs';

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const BASE = env('BASE_URL');
const OUT = env('OUT');
const require = createRequire(env('PLAYWRIGHT_DIR') + '/package.json');
const { chromium } = require('playwright-core');

const browser = await chromium.launch({
  executablePath: env('CHROMIUM'),
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking',
         '--disable-component-update', '--disable-sync', '--no-first-run'],
});
const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1280, height: 900 } });
const problems = [];
// Offline: every request must go to the server under test.
await context.route('**/*', (route) => {
  const url = route.request().url();
  if (url.startsWith(BASE)) return route.continue();
  problems.push(`request to another origin: ${url}`);
  return route.abort();
});
const page = await context.newPage();
// Error statuses the test provokes on purpose (bad token, forged form) show up as "Failed to
// load resource"; anything else (a CSP refusal, a script error) is a problem.
page.on('console', (m) => {
  if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) problems.push(`console error: ${m.text()}`);
});
page.on('pageerror', (e) => problems.push(`page error: ${e}`));

const check = (cond, what) => { if (!cond) throw new Error(`check failed: ${what}`); };
const shot = (name) => page.screenshot({ path: `${OUT}/${name}.png`, fullPage: true });
const signIn = async (token) => {
  await page.goto(`${BASE}/ui/`);
  check(page.url().endsWith('/ui/login'), 'an anonymous visit goes to the sign-in page');
  await page.fill('#token', token);
  await page.click('#signin');
  await page.waitForURL(`${BASE}/ui/`);
};

// Wrong token: refused with a message.
await page.goto(`${BASE}/ui/login`);
await shot('01-login');
await page.fill('#token', 'klu_0000');
await page.click('#signin');
check((await page.textContent('.error')).includes('unknown or revoked token'), 'a bad token is refused');

// Viewer: reads everything, cannot generate the signed pack.
await signIn(env('VIEWER_TOKEN'));
check((await page.textContent('#tile-hosts b')).trim() === env('HOSTS'), 'the overview counts every host');
check((await page.textContent('main')).includes('50.0%'), 'half the hosts run the newest level allowed');
await shot('02-overview-viewer');
await page.goto(`${BASE}/ui/evidence`);
check((await page.locator('#generate').count()) === 0, 'a viewer gets no generate button');
check((await page.textContent('main')).includes('needs the approver or admin role'), 'a viewer is told why');
await shot('03-evidence-viewer');
await page.click('#logout');
await page.waitForURL(`${BASE}/ui/login`);

// Approver.
await signIn(env('APPROVER_TOKEN'));
check((await page.locator('svg.chart').count()) >= 2, 'the overview draws its charts');
await shot('04-overview');

await page.click('text=Hosts');
await page.waitForURL(`${BASE}/ui/hosts`);
const all = await page.locator('#hosts tr').count() - 1;
await page.fill('input[name=q]', env('FILTER'));
await page.selectOption('select[name=channel]', 'canary');
await page.click('#filter');
await page.waitForLoadState();
const filtered = await page.locator('#hosts tr').count() - 1;
check(String(filtered) === env('EXPECT_FILTERED'), `filtering by name and channel shows ${env('EXPECT_FILTERED')} hosts, not ${filtered} (of ${all})`);
await shot('05-hosts-filtered');
await page.click('#hosts tr:nth-child(2) a');
await page.waitForSelector('#timeline');
check((await page.textContent('#timeline')).includes('register'), 'the host timeline starts with its registration');
await shot('06-host');

await page.click('text=Releases');
check((await page.textContent('main')).includes('Approval trail'), 'releases page');
await shot('07-releases');
await page.click('header >> text=CVEs');
await page.waitForSelector('#cves');
await shot('08-cves');
await page.click('#cves tr:nth-child(2) a');
await page.waitForLoadState();
await shot('09-cve');
await page.click('text=Audit log');
check((await page.textContent('main')).includes('intact'), 'the audit chain verifies');
await shot('10-audit');

// The evidence pack, through the button.
await page.goto(`${BASE}/ui/evidence`);
await page.fill('input[name=from]', env('FROM'));
await page.fill('input[name=to]', env('TO'));
await shot('11-evidence');
const [download] = await Promise.all([
  page.waitForEvent('download', { timeout: 180000 }),
  page.click('#generate'),
]);
await download.saveAs(`${OUT}/evidence.tar`);

// A forged form (no session CSRF token) is refused.
const forged = await page.request.post(`${BASE}/ui/evidence`, { form: { csrf: 'forged', from: env('FROM'), to: env('TO') } });
check(forged.status() === 403, `a form without the CSRF token is refused (got ${forged.status()})`);

await browser.close();
writeFileSync(`${OUT}/problems.txt`, problems.join('\n'));
if (problems.length) {
  console.error(problems.join('\n'));
  process.exit(1);
}
console.log('browser test: ok');
