"""python -m models DIR: train every example model and write DIR/NAME.skops + DIR/NAME.csv."""
import sys

from . import recipes, write_example

if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else "out/models"
    for name, train in recipes().items():
        model_path, sample_path = write_example(train(), target)
        print(f"{name}: {model_path} {sample_path}")
