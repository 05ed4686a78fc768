// The smallest embedding: load the packed model, predict one row, then 100 more on demand.
import { load } from 'iris';

import row from './row.json';

const $ = (id) => document.getElementById(id);

try {
  const model = await load();
  const [prediction] = await model.predict([row]);
  $('label').textContent = prediction.label;
  $('served-by').textContent = `served by ${prediction.served_by}`;
  $('status').textContent = 'Ready: the model runs in this browser.';
  $('many').disabled = false;
  $('many').addEventListener('click', async () => {
    const started = performance.now();
    for (let i = 0; i < 100; i++) await model.predict([row]);
    $('many-result').textContent = `100 predictions in ${(performance.now() - started).toFixed(0)} ms`;
  });
} catch (err) {
  $('status').textContent = `The model could not load: ${err.message}`;
}
