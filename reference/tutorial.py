"""PyTorch's CIFAR-10 tutorial, faithfully: ``python -m reference.tutorial [--epochs 2] [--seed S] ...``.

The tutorial's code (torchvision transforms, DataLoader with 2 workers, its Net,
CrossEntropyLoss, SGD with momentum, save ``cifar_net.pth``, reload, test) with the
flags, printout and ``metrics.json`` of ``python -m scratchnet.train``, so the two runs
compare field by field. The data comes from a local folder through scratchnet's
allow-list reader: torchvision's own class would refuse copies whose MD5s differ
from the official release and unpickles with plain ``pickle.load``.
"""

import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
import torchvision
import torchvision.transforms as transforms

from scratchnet import cli, plots, report, runs
from scratchnet.data import CLASSES, read_split
from scratchnet.download import DataError
from scratchnet.files import atomic_open

WEIGHTS_FILE = "cifar_net.pth"


class Net(nn.Module):
    """The tutorial's network, verbatim; ``width`` multiplies both conv channel counts
    (the tutorial's "make it wider" exercise, as ``scratchnet.models.Net(width)``)."""

    def __init__(self, width=1):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6 * width, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6 * width, 16 * width, 5)
        self.fc1 = nn.Linear(16 * width * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)  # flatten all dimensions except batch
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        x = self.fc3(x)
        return x


class LocalCIFAR10(torchvision.datasets.CIFAR10):
    """torchvision's CIFAR10 over a local folder, without its MD5 integrity check.

    Items, transforms and attributes are torchvision's (``data`` is NHWC uint8);
    only the reading differs. ``limit`` keeps the first ``limit`` images.
    """

    def __init__(self, root, train=True, transform=None, download=False, limit=None):
        torchvision.datasets.VisionDataset.__init__(self, root, transform=transform)
        self.train = train
        images, labels = read_split(root, train, download, limit)
        self.data = np.ascontiguousarray(images.transpose(0, 2, 3, 1))  # HWC, as torchvision keeps it
        self.targets = labels.tolist()
        self.classes = list(CLASSES)
        self.class_to_idx = {name: index for index, name in enumerate(self.classes)}


# The tutorial's preprocessing: to [0, 1] tensors, then to [-1, 1].
transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])


def train(net, trainloader, criterion, optimizer, epochs, log_every):
    """The tutorial's training loop; return (loss_curve, epoch_losses, step_losses) as scratchnet's ``fit`` does."""
    loss_curve, epoch_losses, step_losses = [], [], []
    for epoch in range(epochs):  # loop over the dataset multiple times
        running_loss = 0.0
        losses = []
        for i, data in enumerate(trainloader, 0):
            # get the inputs; data is a list of [inputs, labels]
            inputs, labels = data

            # zero the parameter gradients
            optimizer.zero_grad()

            # forward + backward + optimize
            outputs = net(inputs)
            loss = criterion(outputs, labels)
            loss.backward()
            optimizer.step()

            # print statistics
            running_loss += loss.item()
            losses.append(loss.item())
            if i % log_every == log_every - 1:  # print every log_every mini-batches
                loss_curve.append({"epoch": epoch + 1, "step": i + 1, "global_step": epoch * len(trainloader) + i + 1,
                                   "loss": running_loss / log_every})
                print(report.loss_line(epoch + 1, i + 1, running_loss / log_every))
                running_loss = 0.0
        epoch_losses.append(float(np.mean(losses)))
        step_losses.append(losses)
    return loss_curve, epoch_losses, np.array(step_losses)


def predict(net, testloader):
    """Predicted classes for the whole test loader, in order."""
    predictions = []
    # since we're not training, we don't need to calculate the gradients for our outputs
    with torch.no_grad():
        for data in testloader:
            images, labels = data
            # calculate outputs by running images through the network
            outputs = net(images)
            # the class with the highest energy is what we choose as prediction
            _, predicted = torch.max(outputs, 1)
            predictions.append(predicted.numpy())
    return np.concatenate(predictions)


def main(argv=None):
    parser = cli.Parser(prog="python -m reference.tutorial", description=__doc__.split("\n\n")[0])
    cli.add_training_arguments(parser)
    parser.add_argument("--workers", type=cli.non_negative_int, default=2,
                        help="DataLoader worker processes (default 2, as the tutorial)")
    parser.add_argument("--threads", type=cli.positive_int,
                        help="torch intra-op threads (default: torch's own choice, as the tutorial)")
    args = parser.parse_args(argv)
    with cli.one_line_errors(parser.prog, DataError, OSError, runs.RunFolderError):
        run(args)


def run(args):
    seed = cli.resolve_seed(args.seed)
    with runs.open_run_folder(args.out, f"reference-seed{seed}", overwrite=args.overwrite) as folder:
        if args.overwrite:
            print(f"note: --overwrite: replacing the run in {folder.path}", file=sys.stderr)
        _train_and_test(args, seed, folder.path)


def _train_and_test(args, seed, run_dir):
    started = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(seed)
    batch_size = args.batch_size

    trainset = LocalCIFAR10(root=args.data, train=True, download=args.download, transform=transform,
                            limit=args.limit_train)
    trainloader = torch.utils.data.DataLoader(trainset, batch_size=batch_size, shuffle=True, num_workers=args.workers)
    testset = LocalCIFAR10(root=args.data, train=False, transform=transform, limit=args.limit_test)
    testloader = torch.utils.data.DataLoader(testset, batch_size=args.test_batch_size or batch_size, shuffle=False,
                                             num_workers=args.workers)
    classes = CLASSES
    path = os.path.join(run_dir, WEIGHTS_FILE)
    data_time = time.perf_counter() - started

    net = Net()
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.SGD(net.parameters(), lr=args.lr, momentum=args.momentum)

    train_started = time.perf_counter()
    loss_curve, epoch_losses, _ = train(net, trainloader, criterion, optimizer, args.epochs, args.log_every)
    train_time = time.perf_counter() - train_started
    print("Finished Training")
    with atomic_open(path) as file:
        torch.save(net.state_dict(), file)

    # Reload the saved weights, as the tutorial does, and test them.
    test_started = time.perf_counter()
    net = Net()
    net.load_state_dict(torch.load(path, weights_only=True))
    predictions = predict(net, testloader)
    test_time = time.perf_counter() - test_started
    labels = np.asarray(testset.targets)
    summary = report.accuracy_summary(labels, predictions, classes)
    for line in report.test_report_lines(labels, predictions, summary, classes):
        print(line)

    metrics = report.run_metrics(
        framework="pytorch", backend="torch-cpu", seed=seed,
        config=cli.config(args, width=1, workers=args.workers, threads=torch.get_num_threads()),
        data_root=args.data, train_images=len(trainset), steps_per_epoch=len(trainloader), summary=summary,
        loss_curve=loss_curve, epoch_losses=epoch_losses,
        wall_time_s={"data": data_time, "train": train_time, "test": test_time, "total": time.perf_counter() - started},
        versions=report.versions("torch", "torchvision", "numpy"),
    )
    report.write_metrics(run_dir, metrics)
    samples = torch.stack([testset[i][0] for i in range(min(plots.GRID_IMAGES, len(testset)))]).numpy()
    plots.save_all(run_dir, metrics, samples, labels, predictions, classes)
    print(f"Run folder: {run_dir}")


if __name__ == "__main__":
    sys.exit(main())
