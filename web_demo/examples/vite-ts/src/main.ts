// An edgeport model in a Vite + TypeScript app. `iris` is the npm package `edgeport pack` made from the
// bundle: its types come from the model's manifest, so a wrong column or class name is a compile error.
// The model runs in edgeport-client's worker: the page stays responsive while it loads and predicts.
import { load, type Model, type Prediction, type Row } from 'iris';

type IrisRow = Extract<Row, Record<string, unknown>>;
type Column = keyof IrisRow;

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const row: IrisRow = { 'sepal length (cm)': 5.1, 'sepal width (cm)': 3.5, 'petal length (cm)': 1.4, 'petal width (cm)': 0.2 };

function show(prediction: Prediction): void {
  $('label').textContent = prediction.label;
  $('confidence').textContent = `${(100 * prediction.confidence).toFixed(1)}%`;
  $('served-by').textContent = `served by ${prediction.served_by} in ${prediction.latency_ms.toFixed(1)} ms`;
}

function buildForm(model: Model): void {
  const form = $<HTMLFormElement>('row');
  for (const column of Object.keys(row) as Column[]) {
    const label = document.createElement('label');
    const input = document.createElement('input');
    Object.assign(input, { type: 'number', step: 'any', name: column, value: String(row[column]) });
    input.addEventListener('input', async () => {
      if (input.value === '' || !Number.isFinite(input.valueAsNumber)) return;
      row[column] = input.valueAsNumber;
      const [prediction] = await model.predict([row]); // predicts on every change
      show(prediction);
    });
    label.append(`${column} `, input);
    form.append(label, document.createElement('br'));
  }
}

async function main(): Promise<void> {
  try {
    const model = await load();
    buildForm(model);
    show((await model.predict([row]))[0]);
    $('status').textContent = 'Ready: the model runs in this browser.';
    const many = $<HTMLButtonElement>('many');
    many.disabled = false;
    many.addEventListener('click', async () => {
      const started = performance.now();
      for (let i = 0; i < 100; i++) await model.predict([row]);
      $('many-result').textContent = `100 predictions in ${(performance.now() - started).toFixed(0)} ms`;
    });
  } catch (err) {
    // every client error has a documented `code` (see edgeport-client's types)
    $('status').textContent = `The model could not load: ${(err as Error).message}`;
  }
}

// Type checks: compiled by `npm run build` (tsc --noEmit), never called.
export function typeChecks(model: Model, prediction: Prediction): void {
  // @ts-expect-error an unknown column does not compile
  void model.predict([{ nope: 'x' }]);
  // @ts-expect-error a class the model does not have
  const rose: typeof prediction.label = 'rose';
  void rose;
}

void main();
